"""The dataset card (`README.md`) `pipelines.push` publishes with a mixture, a Cauldron export or a pipeline output.

Its YAML front matter declares the configs, so `datasets.load_dataset("ORG/NAME")` finds the data files, and for a
pretraining mixture the features of every image member (`mixtures.layout.datasets_features`: without them
`datasets` keeps only the image fields it saw in its first samples). Its body says what the data is and how it was
made: the recipe (`mixture.json`, with the stage spec in `extra`), the validation report, the run summaries, the
decontamination report and the sources' licences.
"""

from __future__ import annotations

import json
from pathlib import Path

from mixtures.layout import conversation_features
from mixtures.validate import Report

# Licences as the sources' Hub cards declare them (checked on each card's YAML `license`):
# HuggingFaceM4/OBELICS and laion/laion-coco: cc-by-4.0; pixparse/pdfa-eng-wds: other (license_name pdfa-eng-wds);
# pixparse/idl-wds: other (license_name idl-train); HuggingFaceM4/the_cauldron: each subset keeps its own.
# A source: (name, Hub id, the card's `license` value, what the card says about it).
OBELICS = ("OBELICS", "HuggingFaceM4/OBELICS", "cc-by-4.0", "CC-BY-4.0")
LAION_COCO = ("LAION-COCO", "laion/laion-coco", "cc-by-4.0", "CC-BY-4.0")
PDFA = ("PDFA", "pixparse/pdfa-eng-wds", "other", "other: the pdfa-eng-wds licence, see the source's card")
IDL = ("OCR-IDL", "pixparse/idl-wds", "other", "other: the idl-train licence, see the source's card")
CAULDRON = ("The Cauldron", "HuggingFaceM4/the_cauldron", "other",
            "varies per subset: each keeps the licence of the dataset it was made from, see the source's card")
MIXTURE_SOURCES = {"obelics": [OBELICS], "pairs": [LAION_COCO], "pages": [PDFA, IDL]}
PIPELINES = {"obelics": [OBELICS], "laion_coco": [LAION_COCO], "pdfa": [PDFA, IDL]}
PAGE_FILE_PREFIXES = {"pdfa-eng-train": PDFA, "idl-train": IDL}  # the public shards' names (Hub file lists)
PAGE_FORMATS = {"pdfa": PDFA, "idl": IDL}  # the pages pipeline's --format
MAX_EMBEDDED_CHARS = 50_000  # a summary or report longer than this is cut in the card (the file itself is pushed)


def licences(report: Report, manifest: dict | None) -> list[tuple[str, str, str, str]]:
    """(name, Hub id, licence) of every source the data came from."""
    if report.kind in ("cauldron", "sft"):
        return [CAULDRON]
    if report.kind == "pipeline":
        found = PIPELINES.get(report.name, [])
        files = (manifest or {}).get("files") or []
        named = {PAGE_FILE_PREFIXES[p] for f in files for p in PAGE_FILE_PREFIXES if str(f).startswith(p)}
        page_format = ((manifest or {}).get("options") or {}).get("--format")
        named |= {PAGE_FORMATS[page_format]} if page_format in PAGE_FORMATS else set()
        return ([s for s in found if s in named] or found) if report.name == "pdfa" else found
    return [source for name in report.sources for source in MIXTURE_SOURCES.get(name, [])]


def _data_files(path: str, split: str = "train") -> list[dict]:
    return [{"split": split, "path": path}]


def _info(config: str, features) -> dict:
    from datasets.info import DatasetInfo

    return {"config_name": config, **DatasetInfo(features=features)._to_yaml_dict()}


def configs(report: Report, files: list[str], max_images: int) -> tuple[list[dict], list[dict]]:
    """(`configs`, `dataset_info`) of the card for the files that are pushed."""
    if report.kind == "pretrain":
        from mixtures.layout import datasets_features

        return ([{"config_name": "default", "data_files": _data_files(report.info["files"])}],
                [_info("default", datasets_features(max(max_images, 1)))])
    if report.kind == "sft":
        return ([{"config_name": "default", "data_files": _data_files(report.info["files"])}],
                [_info("default", conversation_features(sft=True))])
    if report.kind == "cauldron":
        out = [{"config_name": name, "data_files": _data_files(pattern)}
               for name, pattern in _folder_patterns(files).items() if name != "sft"]
        info = [_info(c["config_name"], conversation_features(sft=False)) for c in out]
        if any(f.startswith("sft/") for f in files):
            out.insert(0, {"config_name": "sft", "data_files": _data_files("sft/data/*.parquet"), "default": True})
            info.insert(0, _info("sft", conversation_features(sft=True)))
        return out, info
    data = sorted({f"data/*{Path(f).suffix}" for f in files if f.startswith("data/")})
    # images/*.tar (the URL pipelines' downloads) get no config: `datasets` reads every config of a repository with
    # one builder, inferred from all data files, so tars beside parquet would break the default config
    return [{"config_name": "default", "data_files": _data_files(data[0] if len(data) == 1 else data)}], []


def _folder_patterns(files: list[str]) -> dict[str, str | list[str]]:
    """{top folder: glob of its parquet files}, one glob per folder that holds them."""
    folders: dict[str, set[str]] = {}
    for f in files:
        if f.endswith(".parquet") and "/" in f:
            folders.setdefault(f.split("/", 1)[0], set()).add(str(Path(f).parent / "*.parquet"))
    return {name: sorted(p)[0] if len(p) == 1 else sorted(p) for name, p in sorted(folders.items())}


def _front_matter(report: Report, files: list[str], max_images: int, sources) -> str:
    import yaml

    ids = {licence for _, _, licence, _ in sources}
    meta = {"license": ids.pop() if len(ids) == 1 else "other", "tags": ["idefics2", "vision-language", report.kind]}
    meta["configs"], info = configs(report, files, max_images)
    if info:
        meta["dataset_info"] = info[0] if len(info) == 1 else info
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _json_block(value) -> str:
    text = json.dumps(value, indent=1, ensure_ascii=False)
    if len(text) > MAX_EMBEDDED_CHARS:
        text = text[:MAX_EMBEDDED_CHARS] + "\n... (cut: the whole file is in this repository)"
    return f"```json\n{text}\n```\n"


def _pipeline_recipe(manifest: dict | None) -> str:
    """A pipeline output's recipe: its steps and every option that changed its output, from its manifest."""
    if not manifest:
        return ""
    recipe = {k: manifest.get(k) for k in ("pipeline", "steps", "limit", "shards", "options") if k in manifest}
    return "## Recipe\n\nThe run's steps and output-changing options (`manifest.json`):\n\n" + _json_block(recipe)


def _recipe(report: Report, manifest: dict | None) -> str:
    if report.kind == "pipeline":
        return _pipeline_recipe(manifest)
    if not report.info:
        return ""
    rows = ["| source | target share | max tokens | image max side |", "|---|---|---|---|"]
    for name, target in report.info.get("sources", {}).items():
        rows.append(f"| {name} | {100 * target['share']:.2f}% | {target.get('max_tokens') or '-'} | "
                    f"{target.get('image_max_side') or '-'} |")
    spec = {k: report.info.get(k) for k in ("kind", "name", "share_of", "image_tokens", "tokenizer", "seed")}
    return ("## Recipe\n\nShares are of " + str(report.info.get("share_of", "")).replace("_", " ") + ".\n\n"
            + "\n".join(rows) + "\n\n" + _json_block({**spec, "spec": report.info.get("extra", {})}))


def _usage(repo_id: str, report: Report, config_names: list[str], images: bool) -> str:
    if report.kind == "cauldron":
        example = f'load_dataset("{repo_id}", "{config_names[-1]}", split="train")'
    else:
        example = f'load_dataset("{repo_id}", split="train")'
    text = f"## Loading\n\n```python\nfrom datasets import load_dataset\n\nds = {example}\n```\n"
    if images:
        text += ("\nThe downloaded images are in `images/*.tar` (webdataset; each image's JSON names its URL), loaded "
                 f'with `load_dataset("webdataset", data_files="hf://datasets/{repo_id}/images/*.tar")`.\n')
    return text


def dataset_card(report: Report, folder: Path, files: list[str], repo_id: str, max_images: int = 0) -> str:
    """The README.md for `files` (paths relative to `folder`), the exact set that is pushed."""
    from mixtures.report import format_table

    manifest = _read_json(folder / "manifest.json")
    sources = licences(report, manifest)
    parts = [_front_matter(report, files, max_images, sources),
             f"# {repo_id}\n\n{_what(report)} Made with the Idefics2 data recipe (Laurençon et al., 2024, "
             f"\"What matters when building vision-language models?\").\n",
             _usage(repo_id, report, [c["config_name"] for c in configs(report, files, max_images)[0]],
                    any(f.startswith("images/") for f in files)),
             "## Sources and licences\n\n| source | Hub | licence |\n|---|---|---|\n"
             + "".join(f"| {name} | {hub} | {note} |\n" for name, hub, _, note in sources)
             + "\nEach source's own terms apply to its part of the data.\n",
             _recipe(report, manifest),
             "## Validation\n\n`python -m mixtures.validate` on the pushed data:\n\n```\n"
             + format_table(report).replace(report.path, ".") + "\n```\n"]
    summary = _read_json(folder / "summary.json")
    if summary:
        summary.pop("shards", None)  # per-shard records stay in summary.json
        parts.append("## Run summary\n\n" + _json_block(summary))
    report_md = folder / "decontam_report.md"
    if report_md.is_file():
        text = report_md.read_text(encoding="utf-8", errors="replace")[:MAX_EMBEDDED_CHARS]
        parts.append("## Decontamination\n\n" + ("\n" + text).replace("\n#", "\n###").strip() + "\n")
    return "\n".join(p for p in parts if p)


def _what(report: Report) -> str:
    return {"pretrain": f"A pretraining mixture (`{report.name}`): webdataset shards, one interleaved sample each.",
            "sft": "An SFT mixture of The Cauldron's subsets, as user/assistant conversations.",
            "cauldron": "The Cauldron's subsets in the published schema (`images`, `texts`), one config each.",
            "pipeline": f"The documents kept by the `{report.name}` pipeline."}[report.kind]


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
