"""`python -m pipelines.mixture` end to end on the sample pipelines' outputs: shares, determinism, workers, caps,
maximum lengths, token counts, and the tars read by stock webdataset and datasets."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from mixtures.layout import datasets_features, iter_samples
from pipelines import cli, mixture
from pipelines.demo import sample_path
from tests.conftest import run_command

TOKENIZER = sample_path("models", "tiny-falcon")
SAMPLES = 2000


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> Path:
    """The OBELICS, LAION-COCO and PDFA sample pipelines' outputs (only the steps a mixture needs: fast)."""
    root = tmp_path_factory.mktemp("mixture-sources")
    images = sample_path("img2dataset")
    runs = [("pipelines.obelics", "obelics", ["--input", sample_path("obelics"), "--steps", "structure,images",
                                              "--images", images]),
            ("pipelines.laion_coco", "laion_coco", ["--input", sample_path("laion_coco"), "--steps", "images",
                                                    "--images", images]),
            ("pipelines.pdfa", "pdfa", ["--input", sample_path("pdfa"), "--steps", "pages"])]
    for module, name, flags in runs:
        spec = importlib.import_module(module).SPEC
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert cli.main(spec, [*flags, "--output", str(root / name), "--workers", "2"]) == 0
    return root


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def build(sources: Path, output: Path, *flags: str, stage: str = "1") -> Result:
    """The command, run in this process (transformers imported once for the whole file, not once a build)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = mixture.main(["--stage", stage, "--sources-root", str(sources), "--output", str(output),
                             "--tokenizer", TOKENIZER, *flags])
    return Result(code, out.getvalue(), err.getvalue())


def read_mixture(output: Path) -> list:
    samples = []
    for tar in sorted((output / "data").glob("*.tar")):
        with open(tar, "rb") as f:
            samples += list(iter_samples(f))
    return samples


@pytest.fixture(scope="module")
def stage1(sources, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("stage1") / "mixture"
    result = run_command("pipelines.mixture", "--stage", "1", "--sources-root", str(sources), "--output",
                         str(output), "--tokenizer", TOKENIZER, "--samples", str(SAMPLES), "--shard-size", "500",
                         "--workers", "1")
    assert result.returncode == 0, result.stderr
    return output


def test_shares_within_one_point_of_the_target(stage1):
    samples = read_mixture(stage1)
    assert len(samples) == SAMPLES
    targets = json.loads((stage1 / "mixture.json").read_text())["sources"]
    for name, target in targets.items():
        share = sum(s.source == name for s in samples) / len(samples)
        assert abs(share - target["share"]) <= 0.01, (name, share)
    summary = json.loads((stage1 / "summary.json").read_text())
    assert summary["samples"] == SAMPLES and summary["max_images"] == max(len(s.images) for s in samples)
    pairs = summary["sources"]["pairs"]
    assert pairs["units_distinct"] == pairs["units_available"] and pairs["repeat_factor"] > 1  # sample data: repeats
    for name, source in summary["sources"].items():  # stage 1 on the sample: no splits, no drops
        assert source["units_read"] == source["samples"], name


def test_same_seed_same_bytes_with_one_and_four_workers(sources, stage1, tmp_path):
    again = tmp_path / "again"
    result = build(sources, again, "--samples", str(SAMPLES), "--shard-size", "500", "--workers", "4")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (stage1 / "data").iterdir())
    assert names == sorted(p.name for p in (again / "data").iterdir()) and len(names) == 4
    for name in names:
        assert (stage1 / "data" / name).read_bytes() == (again / "data" / name).read_bytes(), name


def test_images_within_the_cap_and_lengths_within_the_maximum(stage1):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    limits = {name: t["max_tokens"] for name, t in json.loads((stage1 / "mixture.json").read_text())["sources"].items()}
    for number, sample in enumerate(read_mixture(stage1)):
        for data, size in zip(sample.images, sample.image_sizes):
            image = Image.open(io.BytesIO(data))
            assert image.format == "JPEG" and list(image.size) == size and max(image.size) <= 384
        texts = [t for t in sample.texts if t is not None]
        if number % 10 == 0:  # an independent count, on every tenth sample
            text = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
            image = 64 * len(sample.images)
            assert sample.tokens == {"text": text, "image": image, "total": text + image}
        assert sample.tokens["total"] <= limits[sample.source]


def test_stock_webdataset_reads_the_tars(stage1):
    import webdataset

    urls = [str(p) for p in sorted((stage1 / "data").glob("*.tar"))]
    count = images = 0
    for sample in webdataset.WebDataset(urls, shardshuffle=False):
        record = json.loads(sample["json"])
        names = [n for n in record["images"] if n is not None]
        assert all(isinstance(sample[n], bytes) for n in names)
        count, images = count + 1, images + len(names)
    assert count == SAMPLES and images > SAMPLES


def test_datasets_loads_every_image_with_the_features(stage1):
    import datasets

    samples = read_mixture(stage1)
    counts = {len(s.images) for s in samples}
    assert len(counts) > 1  # samples with different image counts: the case datasets' inference gets wrong
    max_images = json.loads((stage1 / "summary.json").read_text())["max_images"]
    first = str(sorted((stage1 / "data").glob("*.tar"))[0])
    loaded = datasets.load_dataset("webdataset", data_files={"train": first}, split="train",
                                   features=datasets_features(max_images))
    wanted = [s for s in samples if s.key.startswith("00000_")]
    assert len(loaded) == len(wanted)
    for row, sample in zip(loaded, wanted):
        present = [row[f"{i}.jpg"] for i in range(max_images) if row[f"{i}.jpg"] is not None]
        assert len(present) == len(sample.images) == len(row["json"]["image_sizes"])


def test_stage2_caps_scales_up_and_mixes_pages(sources, tmp_path):
    output = tmp_path / "stage2"
    result = build(sources, output, "--samples", "300", "--shard-size", "3MB", "--workers", "2",
                   "--source", f"pages={sources / 'pdfa'}", stage="2")
    assert result.returncode == 0, result.stderr
    sizes = [p.stat().st_size for p in sorted((output / "data").glob("*.tar"))]
    assert len(sizes) > 2 and all(2e6 < size < 4e6 for size in sizes[:-1])  # the byte target, from the estimate
    assert "pages" in result.stdout and "20.0%" in result.stdout
    samples = read_mixture(output)
    assert {s.source for s in samples} == {"obelics", "pairs", "pages"}
    sides = [max(size) for s in samples for size in s.image_sizes]
    assert max(sides) <= 980
    originals = [max(Image.open(p).size) for p in Path(sample_path("img2dataset")).glob("*.jpg")] or [0]
    assert any(side > max(originals) for side in sides)  # scaled up beyond every sample image's own size
    info = json.loads((output / "mixture.json").read_text())
    assert info["kind"] == "pretrain" and info["name"] == "stage2" and info["files"] == "data/*.tar"


SPLIT_SPEC = """
name = "tiny"
image_max_side = 64
image_tokens = 16
[sources.obelics]
format = "obelics"
paths = ["obelics"]
share = 0.6
max_tokens = {max_tokens}
too_long = "{too_long}"
[sources.pairs]
format = "pairs"
paths = ["laion_coco"]
share = 0.4
max_tokens = 1536
too_long = "drop"
"""


@pytest.mark.parametrize("too_long", ["split", "drop"])
def test_long_documents_are_split_at_text_boundaries_or_dropped(sources, tmp_path, too_long):
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPLIT_SPEC.format(max_tokens=60, too_long=too_long))
    output = tmp_path / "out"
    result = build(sources, output, "--samples", "400", "--shard-size", "200", "--workers", "2", stage=str(spec))
    assert result.returncode == 0, result.stderr
    samples = read_mixture(output)
    obelics = [s for s in samples if s.source == "obelics"]
    assert len(obelics) == 240 and all(s.tokens["total"] <= 60 for s in obelics)  # 60% of 400, each within 60
    summary = json.loads((output / "summary.json").read_text())["sources"]["obelics"]
    if too_long == "split":
        assert summary["split_units"] > 0 and summary["split_parts"] > summary["split_units"]
        parts = [s for s in obelics if s.origin["parts"] > 1]
        assert parts
        for s in parts:  # every image is followed by text (its own), unless images end the document
            for position, text in enumerate(s.texts[:-1]):
                if text is None:
                    assert any(t is not None for t in s.texts[position + 1:])
    else:
        assert summary["dropped_too_long"] > 0 and summary["split_units"] == 0
        assert all(s.origin["parts"] == 1 for s in obelics)


def test_a_source_that_is_not_a_finished_run_is_one_error_line(sources, tmp_path):
    unfinished = tmp_path / "obelics"
    shutil.copytree(sources / "obelics" / "data", unfinished / "data")
    result = run_command("pipelines.mixture", "--stage", "1", "--source", f"obelics={unfinished}",
                         "--source", f"pairs={sources / 'laion_coco'}", "--output", str(tmp_path / "out"),
                         "--tokenizer", TOKENIZER)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: source obelics: {unfinished}: no summary.json: not a "
                                                  f"finished pipeline run"]
    result = run_command("pipelines.mixture", "--stage", "1", "--output", str(tmp_path / "out"),
                         "--source", "nope=x")
    assert result.returncode == 2 and "the spec has no source 'nope'" in result.stderr
    for flags, message in [(["--tokenizer", str(tmp_path / "no-tokenizer")], "error: --tokenizer "),
                           (["--stage", str(tmp_path / "none.toml")], "error: --stage "),
                           (["--source", f"pairs={tmp_path}"], "error: source pairs: ")]:
        result = build(sources, tmp_path / "out", *flags)
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_resume_skips_done_shards_and_refuses_other_settings(sources, tmp_path):
    output = tmp_path / "out"
    assert build(sources, output, "--samples", "100", "--shard-size", "50").returncode == 0
    before = {p.name: p.read_bytes() for p in (output / "data").iterdir()}
    (output / "data" / "00001.tar").unlink()  # as if that shard had not finished
    (output / "logs" / "completions" / "00001").unlink()
    result = build(sources, output, "--samples", "100", "--shard-size", "50")
    assert result.returncode == 0 and "1 to build" in result.stderr
    assert {p.name: p.read_bytes() for p in (output / "data").iterdir()} == before
    result = build(sources, output, "--samples", "100", "--shard-size", "50", "--seed", "1")
    assert result.returncode == 2 and "was made with another seed" in result.stderr


def _break_every_other_image(output: Path, copy: Path) -> None:
    """A copy of a pipeline output whose images tars hold a corrupted JPEG every other image."""
    shutil.copytree(output, copy, ignore=shutil.ignore_patterns("cache", "logs"))
    for tar_path in sorted((copy / "images").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(tar_path, "w") as tar:
            for number, (member, data) in enumerate(members):
                if member.name.endswith(".jpg") and number % 4 < 2:  # a .jpg and its .json in turn: every other one
                    data = b"\xff\xd8not a jpeg" + bytes(len(data))
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


def test_unreadable_images_are_counted_and_replaced_never_written_without(sources, tmp_path):
    """Corrupted images in the OBELICS and LAION-COCO outputs: a pair that loses its image is no sample, nor is a
    document that loses all of them (a document keeps the images it has left); each is counted and the next unit
    of its source takes its place, so every quota is exact; the same seed still gives the same bytes on 1 or 2
    workers."""
    _break_every_other_image(sources / "obelics", tmp_path / "obelics")
    _break_every_other_image(sources / "laion_coco", tmp_path / "laion_coco")
    flags = ["--source", f"obelics={tmp_path / 'obelics'}", "--source", f"pairs={tmp_path / 'laion_coco'}",
             "--samples", "60", "--shard-size", "20"]
    result = build(sources, tmp_path / "out", *flags)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["sources"]
    for name in ("obelics", "pairs"):
        assert summary[name]["samples"] == summary[name]["target_samples"] and summary[name]["exhausted_in_shards"] == 0
        assert summary[name]["images_lost"]["not_an_image"] > 0
    assert summary["pairs"]["unreadable"]["images_lost"] == summary["pairs"]["images_lost"]["not_an_image"]
    assert summary["obelics"]["images_lost"]["not_an_image"] > summary["obelics"]["unreadable"].get("images_lost", 0)
    samples = read_mixture(tmp_path / "out")
    assert all(len(s.images) == 1 for s in samples if s.source == "pairs")
    assert all(s.images and s.texts.count(None) == len(s.images) for s in samples if s.source == "obelics")
    again = build(sources, tmp_path / "again", *flags, "--workers", "2")
    assert again.returncode == 0, again.stderr
    for tar in sorted((tmp_path / "out" / "data").iterdir()):
        assert tar.read_bytes() == (tmp_path / "again" / "data" / tar.name).read_bytes(), tar.name


PAGES_ONLY = """
name = "pages_only"
image_max_side = 64
image_tokens = 64
[sources.pages]
format = "pages"
paths = ["pages"]
share = 1.0
max_tokens = 1024
"""


def test_hostile_pages_tar_is_counted_not_fatal(tmp_path):
    """A pages output whose tar holds a link, a sample without image, a JSON that is not JSON, and ends cut short."""
    folder = tmp_path / "pages"
    (folder / "data").mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    buffer = io.BytesIO()
    Image.new("RGB", (100, 50), (10, 20, 30)).save(buffer, format="JPEG")
    members = [("good_00000.jpg", buffer.getvalue()), ("good_00000.json", b'{"text": "a page", "key": "good", '
                                                                          b'"page": 0}'),
               ("noimage_00000.json", b'{"text": "no image"}'), ("badjson_00000.jpg", buffer.getvalue()),
               ("badjson_00000.json", b"{not json")]
    with tarfile.open(folder / "data" / "00000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link_00000.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        tar.addfile(tarfile.TarInfo("link_00000.json"), io.BytesIO(b""))
        last = tarfile.TarInfo("cut_00000.jpg")
        last.size = 100_000
        tar.addfile(last, io.BytesIO(bytes(100_000)))
    data = (folder / "data" / "00000.tar").read_bytes()
    (folder / "data" / "00000.tar").write_bytes(data[:data.index(bytes(512) * 20) - 50_000])  # cut inside the last
    spec = tmp_path / "pages.toml"
    spec.write_text(PAGES_ONLY)
    result = build(tmp_path, tmp_path / "out", "--samples", "20", stage=str(spec))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["sources"]["pages"]
    assert summary["samples"] == 20 and summary["unreadable"].keys() == {"no_image", "bad_json", "no_json"}
    assert summary["units_available"] == 5 and "unexpected end of data" in summary["count_problems"][0]
    samples = read_mixture(tmp_path / "out")
    assert {s.origin["id"] for s in samples} == {"good_00000"}
    assert all(s.image_sizes == [[64, 32]] for s in samples)


def test_pages_members_in_folders_are_read_and_unsafe_names_are_counted(tmp_path):
    """A pages tar whose kept members sit in a folder (`dir/doc_00000.jpg`) is read by its nested keys; members
    named absolute or with `..` are skipped and say so in `summary.json`, never silently."""
    folder = tmp_path / "pages"
    (folder / "data").mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    buffer = io.BytesIO()
    Image.new("RGB", (100, 50), (10, 20, 30)).save(buffer, format="JPEG")
    page = b'{"text": "a page", "key": "doc", "page": 0}'
    members = [("dir/doc_00000.jpg", buffer.getvalue()), ("dir/doc_00000.json", page),
               ("../up_00000.jpg", buffer.getvalue()), ("../up_00000.json", page),
               ("/abs_00000.json", page)]
    with tarfile.open(folder / "data" / "00000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    spec = tmp_path / "pages.toml"
    spec.write_text(PAGES_ONLY)
    result = build(tmp_path, tmp_path / "out", "--samples", "3", stage=str(spec))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["sources"]["pages"]
    assert summary["samples"] == 3 and summary["units_available"] == 1
    assert any("3 member(s) skipped" in line and "'../up_00000.jpg'" in line for line in summary["count_problems"])
    assert {s.origin["id"] for s in read_mixture(tmp_path / "out")} == {"doc_00000"}
