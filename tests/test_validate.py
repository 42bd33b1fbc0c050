"""`python -m mixtures.validate`: mixtures built here with the shared layout, checked for what the issue names.

Builders of small mixtures (`write_mixture`, `write_sft_mixture`, `write_cauldron_export`) are shared with the push
and browser tests."""

from __future__ import annotations

import html
import io
import json
from html.parser import HTMLParser
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.io import get_datafolder
from PIL import Image

from mixtures.layout import MixtureInfo, Sample, SourceTarget, add_sample, write_info
from mixtures.validate import main, validate
from tests.conftest import run_command

IMAGE_TOKENS = 64
STAGE1 = {"obelics": 0.7, "pairs": 0.3}  # stage 1's shares (the paper): the test targets


def jpeg(width: int, height: int, color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_sample(key: str, source: str, n_images: int = 1, size=(48, 32), text: str = "a caption",
                text_tokens: int = 5, image_tokens: int | None = None, total: int | None = None) -> Sample:
    images = [jpeg(*size, color=(40 * i % 255, 120, 200)) for i in range(n_images)]
    texts = [None] * n_images + [text]
    image_tokens = n_images * IMAGE_TOKENS if image_tokens is None else image_tokens
    return Sample(key, source, texts, images, origin={"id": key, "file": "in.parquet", "row": 0, "part": 0,
                                                     "parts": 1},
                  image_sizes=[list(size)] * n_images,
                  tokens={"text": text_tokens, "image": image_tokens,
                          "total": text_tokens + image_tokens if total is None else total})


def write_mixture(folder: Path, counts: dict[str, int] | None = None, shards: int = 2, shares=None,
                  cap: int = 384, max_tokens: int = 2048, extra_samples=(), name: str = "stage1") -> Path:
    """A pretraining mixture: `counts` samples per source spread over `shards` tars, plus `extra_samples`."""
    counts = counts or {"obelics": 70, "pairs": 30}
    samples = [make_sample(f"{source}-{i:05d}", source, n_images=1 + (source == "obelics" and i % 3 == 0))
               for source, n in counts.items() for i in range(n)] + list(extra_samples)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        with tarfile.open(folder / "data" / f"{shard:05d}.tar", "w") as tar:
            for sample in samples[shard::shards]:
                add_sample(tar, sample)
    sources = {name_: SourceTarget(share, max_tokens, cap) for name_, share in (shares or STAGE1).items()}
    write_info(get_datafolder(str(folder)), MixtureInfo("pretrain", name, "samples", sources, "data/*.tar",
                                                        IMAGE_TOKENS, "tiny-falcon", 0, {"stage": 1}))
    (folder / "summary.json").write_text(json.dumps({"max_images": 2}))
    return folder


SFT_SCHEMA = pa.schema([("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
                        ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()),
                                                      ("source", pa.string())]))),
                        ("subset", pa.string()), ("answer_tokens", pa.int64())])


def conversation(subset: str, i: int, answer_tokens: int) -> dict:
    return {"images": [{"bytes": jpeg(40, 30), "path": None}],
            "texts": [{"user": f"What is shown in picture {i}?", "assistant": "A red square.", "source": subset}],
            "subset": subset, "answer_tokens": answer_tokens}


def write_sft_mixture(folder: Path, tokens: dict[str, int], shares: dict[str, float], tolerance: float = 1.0) -> Path:
    """An SFT mixture: per subset, rows of 10 answer tokens adding up to `tokens[subset]`."""
    rows = [conversation(subset, i, 10) for subset, n in tokens.items() for i in range(n // 10)]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SFT_SCHEMA), folder / "data" / "00000.parquet",
                   row_group_size=16)
    sources = {name: SourceTarget(share) for name, share in shares.items()}
    write_info(get_datafolder(str(folder)), MixtureInfo("sft", "sft", "answer_tokens", sources, "data/*.parquet",
                                                        tolerance=tolerance))
    return folder


def write_cauldron_export(folder: Path, rows: dict[str, int]) -> Path:
    """Subset folders in the Cauldron's published schema (`images`, `texts`)."""
    schema = pa.schema([SFT_SCHEMA.field("images"), SFT_SCHEMA.field("texts")])
    for subset, n in rows.items():
        (folder / subset).mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([conversation(subset, i, 0) for i in range(n)], schema=schema)
        pq.write_table(table, folder / subset / "train-00000.parquet")
    return folder


def check(path: Path, *args: str) -> tuple[int, str]:
    """Exit code and the printed report of `validate PATH args...`, run in-process."""
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        code = main([str(path), *args])
    return code, out.getvalue()


def test_good_mixture_passes_from_the_command_line(tmp_path):
    result = run_command("mixtures.validate", str(write_mixture(tmp_path / "m")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "obelics" in result.stdout and "70.00%" in result.stdout and "all checks passed" in result.stdout


def test_skewed_mixture_fails_from_the_command_line(tmp_path):
    result = run_command("mixtures.validate", str(write_mixture(tmp_path / "m", {"obelics": 60, "pairs": 40})))
    assert result.returncode == 1
    assert "obelics: share 60.00% is -10.00 points off its target 70.00%" in result.stdout


def test_image_over_the_cap_fails(tmp_path):
    big = make_sample("pairs-big", "pairs", size=(385, 20))
    code, out = check(write_mixture(tmp_path / "m", {"obelics": 70, "pairs": 29}, extra_samples=[big]))
    assert code == 1 and "pairs: 1 images over the image size cap" in out
    stats = validate(str(tmp_path / "m")).sources["pairs"]
    assert stats.over_image_cap == 1 and stats.max_side_seen == 385


def test_tolerance_is_in_percentage_points(tmp_path):
    folder = write_mixture(tmp_path / "m", {"obelics": 141, "pairs": 59})  # 70.5% / 29.5%
    assert check(folder)[0] == 0
    assert check(folder, "--tolerance", "0.4")[0] == 1


def test_token_limits_and_recorded_image_tokens(tmp_path):
    long = make_sample("obelics-long", "obelics", text_tokens=5000)
    wrong = make_sample("pairs-wrong", "pairs", image_tokens=10)
    miscounted = make_sample("pairs-total", "pairs", total=3)
    folder = write_mixture(tmp_path / "m", {"obelics": 69, "pairs": 29}, extra_samples=[long, wrong, miscounted])
    code, out = check(folder)
    assert code == 1
    assert "obelics: 1 samples over the token maximum" in out
    assert "pairs: 1 samples whose image tokens are not images x 64" in out
    assert "pairs: 1 samples whose total tokens are not text + image tokens" in out


def test_image_sizes_are_read_from_the_header_and_compared_with_the_record(tmp_path):
    lying = make_sample("pairs-lie", "pairs", size=(48, 32))
    lying.image_sizes = [[20, 20]]
    hostile = make_sample("pairs-hostile", "pairs", size=(48, 32))
    hostile.image_sizes = [7]  # not a [width, height] pair: counted, the rest of the shard still read
    folder = write_mixture(tmp_path / "m", {"obelics": 70, "pairs": 28}, extra_samples=[lying, hostile], shards=1)
    code, out = check(folder)
    assert code == 1 and "pairs: 2 images whose size is not the recorded image_sizes" in out
    assert "unreadable" not in out


def test_duplicate_keys_unreadable_samples_and_a_truncated_tar_are_counted(tmp_path):
    folder = write_mixture(tmp_path / "m", {"obelics": 70, "pairs": 30},
                           extra_samples=[make_sample("obelics-00000", "obelics")])  # same key as a real one
    with tarfile.open(folder / "data" / "00002.tar", "w") as tar:  # a hostile member and a link
        data = b"{}"
        info = tarfile.TarInfo("../evil.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("x.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(4):
            add_sample(tar, make_sample(f"cut-{i}", "pairs"))
    (folder / "data" / "00003.tar").write_bytes(buffer.getvalue()[:1800])  # ends inside an image member
    report = validate(str(folder))
    assert report.duplicate_keys == 1
    assert report.unreadable["unsafe_member"] == 2 and report.unreadable["unreadable_tar"] == 1
    code, out = check(folder)
    assert code == 1 and "1 duplicate sample keys" in out and "2 unreadable (unsafe_member)" in out


def test_json_and_plot(tmp_path):
    folder = write_mixture(tmp_path / "m", {"obelics": 70, "pairs": 30})
    code, out = check(folder, "--json", "--plot", str(tmp_path / "shares.png"))
    value = json.loads(out)
    assert code == 0 and value["kind"] == "pretrain" and value["failures"] == []
    assert value["sources"]["obelics"]["samples"] == 70 and value["sources"]["pairs"]["share"] == pytest.approx(0.3)
    assert value["sources"]["obelics"]["image_tokens"] == (70 + 24) * IMAGE_TOKENS  # every third has two images
    with Image.open(tmp_path / "shares.png") as image:
        assert image.size[0] > 300 and len(image.convert("L").getcolors(256 * 256) or []) > 10


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def no_outside_reference(page: str) -> bool:
    """Nothing in the page makes a browser fetch or run anything: no script, link, frame or object, one style
    element without url() or @import, and every src/href a data: URI (parsed as a browser would, not grepped)."""
    parser = _Tags()
    parser.feed(page)
    names = [tag for tag, _ in parser.tags]
    style = page[page.index("<style>"):page.index("</style>")].lower()
    return (not {"script", "link", "iframe", "object", "embed", "base"} & set(names)
            and names.count("style") == 1 and "url(" not in style and "@import" not in style
            and all(v is None or v.startswith("data:") for _, attrs in parser.tags for k, v in attrs.items()
                    if k in ("src", "href", "srcset", "xlink:href", "action")))


def test_html_is_one_self_contained_page(tmp_path):
    folder = write_mixture(tmp_path / "m", {"obelics": 70, "pairs": 30})
    code, _ = check(folder, "--html", str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert code == 0 and no_outside_reference(page)
    assert '<table id="shares">' in page and "<svg" in page
    assert page.count("data:image/jpeg;base64,") == 4 + 3  # three samples a source; obelics-00000 has two images


def test_html_gallery_escapes_hostile_text(tmp_path):
    from mixtures import report as output

    hostile = '<script>alert(1)</script><img src="http://127.0.0.1:9/a"> & <style>body{display:none}</style>'
    folder = write_mixture(tmp_path / "m", {"obelics": 7, "pairs": 3}, shards=1,
                           extra_samples=[make_sample("zz", "pairs", text=hostile)])
    page = output.render_html(validate(str(folder), gallery=20))
    assert html.escape(hostile) in page and no_outside_reference(page)
    assert page.count('class="sample"') == 11


def test_sample_reads_some_shards_spread_over_the_mixture(tmp_path):
    folder = write_mixture(tmp_path / "m", {"obelics": 70, "pairs": 30}, shards=5)
    report = validate(str(folder), sample=2)
    assert (report.files_read, report.files_total) == (2, 5)
    assert sum(s.samples for s in report.sources.values()) == 40
    assert any("--sample" in note for note in report.notes)


def test_file_url_is_read_through_fsspec(tmp_path):
    folder = write_mixture(tmp_path / "m")
    assert check(f"file://{folder}")[0] == 0


def test_unknown_and_unreadable_folders_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    folder = write_mixture(tmp_path / "m")
    (folder / "mixture.json").write_text('{"kind": "pretrain"')
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mixture.json: not a mixture.json" in err
    assert main([str(write_mixture(tmp_path / "ok")), "--html", str(tmp_path / "no" / "dir" / "r.html")]) == 2
    info = json.loads((tmp_path / "ok" / "mixture.json").read_text())
    (tmp_path / "ok" / "mixture.json").write_text(json.dumps({**info, "files": "../*/data/*.tar"}))
    assert main([str(tmp_path / "ok")]) == 2
    assert "must be a glob inside the mixture folder" in capsys.readouterr().err


def test_sft_mixture_shares_of_answer_tokens(tmp_path):
    shares = {"vqav2": 0.6, "ai2d": 0.4}
    good = write_sft_mixture(tmp_path / "good", {"vqav2": 600, "ai2d": 400}, shares)
    code, out = check(good, "--tolerance", "0.5")
    assert code == 0, out
    report = validate(str(good))
    assert report.sources["vqav2"].answer_tokens == 600 and report.sources["ai2d"].turns == 40
    skewed = write_sft_mixture(tmp_path / "skewed", {"vqav2": 610, "ai2d": 390}, shares)  # 61% / 39%
    assert check(skewed, "--tolerance", "0.5")[0] == 1
    assert check(skewed, "--tolerance", "1.5")[0] == 0


def test_a_mixture_is_held_to_its_own_tolerance_unless_told_otherwise(tmp_path):
    """The Cauldron's SFT mixture records 0.5 points: a plain `validate` (and `push`) hold it to that, not to 1."""
    skewed = write_sft_mixture(tmp_path / "skewed", {"vqav2": 610, "ai2d": 390}, {"vqav2": 0.6, "ai2d": 0.4},
                               tolerance=0.5)
    assert check(skewed)[0] == 1
    assert check(skewed, "--tolerance", "1.5")[0] == 0


def test_sft_rows_outside_the_schema_and_unknown_subsets_fail(tmp_path):
    folder = write_sft_mixture(tmp_path / "m", {"vqav2": 600, "ai2d": 400}, {"vqav2": 0.6, "ai2d": 0.4})
    extra = [conversation("ai2d", 0, 10), conversation("mystery", 0, 0)]
    extra[0]["texts"] = []  # no turn
    pq.write_table(pa.Table.from_pylist(extra, schema=SFT_SCHEMA), folder / "data" / "00001.parquet")
    (folder / "data" / "00002.parquet").write_bytes(b"PAR1 not really")
    code, out = check(folder)
    assert code == 1
    assert "mystery: 1 samples from a source mixture.json does not name" in out
    assert "1 unreadable (bad_row)" in out and "1 unreadable (unreadable_parquet)" in out


def test_cauldron_export_counts_rows_images_and_turns(tmp_path):
    folder = write_cauldron_export(tmp_path / "cauldron", {"ai2d": 3, "vqav2": 5})
    write_sft_mixture(folder / "sft", {"vqav2": 60}, {"vqav2": 1.0})
    report = validate(str(folder))
    assert report.kind == "cauldron" and set(report.sources) == {"ai2d", "vqav2"}
    assert (report.sources["vqav2"].samples, report.sources["vqav2"].images, report.sources["vqav2"].turns) == (5, 5, 5)
    assert any("sft" in note for note in report.notes)
    assert report.sources["vqav2"].reference["qa_pairs"] == 443757  # Table 14, from the Cauldron registry
    code, out = check(folder)
    assert code == 0 and "443,757" in out
    write_cauldron_export(folder, {"not_a_subset": 1})
    code, out = check(folder)
    assert code == 1 and "not_a_subset: not a subset of The Cauldron (Table 14)" in out


def test_cauldron_export_with_its_build_records_is_still_a_cauldron_export(tmp_path):
    """The Cauldron's build writes summary.json and manifest.json beside the subsets, as pipelines do."""
    folder = write_cauldron_export(tmp_path / "cauldron", {"ai2d": 3})
    (folder / "summary.json").write_text(json.dumps({"subsets": {"ai2d": {"rows": 3}}}))
    (folder / "manifest.json").write_text(json.dumps({"pipeline": "cauldron"}))
    (folder / "removed").mkdir()
    pq.write_table(pa.table({"reason": ["eval_match"]}), folder / "removed" / "ai2d.parquet")
    report = validate(str(folder))
    assert report.kind == "cauldron" and set(report.sources) == {"ai2d"}
    assert check(folder)[0] == 0


def write_pipeline_output(folder: Path, kept: int = 3, removed: int = 1) -> Path:
    """The files a pipeline run leaves that validate reads: manifest, summary, data and removed shards."""
    (folder / "data").mkdir(parents=True)
    (folder / "removed").mkdir()
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(kept)]}), folder / "data" / "00000.parquet")
    pq.write_table(pa.table({"text": ["gone"] * removed, "removed_step": ["optout"] * removed}),
                   folder / "removed" / "00000.parquet")
    record = {"input": kept + removed, "kept": kept, "removed": {"optout/document_opted_out": removed}}
    (folder / "manifest.json").write_text(json.dumps({"pipeline": "obelics", "files": ["in/00000.parquet"]}))
    (folder / "summary.json").write_text(json.dumps({"total": record, "shards": {"00000": record}}))
    return folder


def test_pipeline_output_accounting(tmp_path):
    folder = write_pipeline_output(tmp_path / "out")
    code, out = check(folder)
    assert code == 0 and "optout/document_opted_out" in out and "75.0%" in out
    summary = json.loads((folder / "summary.json").read_text())
    summary["shards"]["00000"]["input"] = 5  # a document lost between reader and writer
    (folder / "summary.json").write_text(json.dumps(summary))
    code, out = check(folder)
    assert code == 1 and "shard 00000: input 5 != kept 3 + removed 1" in out


def test_pipeline_output_whose_files_disagree_with_the_summary_fails(tmp_path):
    folder = write_pipeline_output(tmp_path / "out")
    pq.write_table(pa.table({"text": ["only one"]}), folder / "data" / "00000.parquet")
    code, out = check(folder)
    assert code == 1 and "holds 1 records, the summary says 3" in out


def test_an_unreachable_hub_path_is_one_line_exit_2():
    """hf:// goes through fsspec's HfFileSystem; the Hub endpoint is a closed loopback port here."""
    result = run_command("mixtures.validate", "hf://datasets/org/mixture",
                         env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: hf://datasets/org/mixture: cannot be read (")
    assert "Traceback" not in result.stderr
