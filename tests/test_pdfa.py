"""`python -m pipelines.pdfa` end to end on the shipped PDF samples, plus hostile tars and PDFs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from filters.pdf_pages import parse_pages
from pipelines.demo import sample_path
from pipelines.webdataset_source import iter_samples, split_name
from scripts.make_pdf_sample import make_pdf, pdfa_json, write_tar
from tests.conftest import run_command, sample_decontam_index

PDFA, IDL = Path(sample_path("pdfa")), Path(sample_path("idl"))


def run_pdfa(*args: str) -> tuple:
    result = run_command("pipelines.pdfa", *args)
    return result, result.stdout + result.stderr


def kept_samples(output: Path) -> dict[str, dict]:
    """Every kept page, read back with the stock webdataset reader: key -> {"jpg": bytes, "json": dict}."""
    samples = {}
    for shard in sorted((output / "data").glob("*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            samples[sample["__key__"]] = {"jpg": sample["jpg"], "json": json.loads(sample["json"])}
    return samples


def removed_records(output: Path) -> list[tuple[dict, bytes | None]]:
    records = []
    for shard in sorted((output / "removed").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in members.items():
            if name.endswith(".json"):
                records.append((json.loads(data), members.get(name.replace(".json", ".pdf"))))
    return records


def summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())["total"]


def balanced(total: dict) -> bool:
    return total["input"] == total["kept"] + sum(total["removed"].values())


@pytest.fixture(scope="module")
def pdfa_output(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("pdfa") / "out"
    result, log = run_pdfa("--input", str(PDFA), "--output", str(output), "--steps", "pages,min_text")
    assert result.returncode == 0, log
    return output


def test_one_sample_per_page_with_schema(pdfa_output):
    samples = kept_samples(pdfa_output)
    report = sorted(k for k in samples if k.startswith("0000a_report_"))
    assert report == ["0000a_report_00000", "0000a_report_00001", "0000a_report_00002"]
    for key, sample in samples.items():
        page = sample["json"]
        assert set(page) == {"key", "page", "pages", "text", "text_source", "lines", "words", "width", "height",
                             "source_file", "source_sample"}
        assert key == f"{page['key']}_{page['page']:05d}"
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and max(image.size) == 980 and image.size == (page["width"], page["height"])
    assert samples["0000a_report_00001"]["json"]["pages"] == 3
    assert len([k for k in samples if k.startswith("0006g_manual_")]) == 6


def test_text_in_json_reading_order_with_word_boxes(pdfa_output):
    page = kept_samples(pdfa_output)["0000a_report_00001"]["json"]
    lines = [f"Report page 2 line {i}: the quick brown fox reads documents" for i in (1, 2, 3)]
    # the PDF draws these lines bottom-up: the text layer would give them reversed
    assert page["text"] == "\n".join(lines) and page["text_source"] == "json"
    assert page["lines"]["text"] == lines and len(page["lines"]["bbox"]) == 3
    assert page["words"]["text"][:3] == ["Report", "page", "2"] and len(page["words"]["bbox"]) == 33


def test_text_layer_fallback_without_json(pdfa_output):
    page = kept_samples(pdfa_output)["0001b_plain_00000"]["json"]
    assert page["text_source"] == "pdf"
    assert page["text"] == "Text layer only: this sample ships no JSON at all\nsecond line of the text layer"


def test_failures_counted_with_reasons(pdfa_output):
    total = summary(pdfa_output)
    assert total["removed"] == {"pages/encrypted": 1, "pages/corrupt": 1, "pages/empty": 1,
                                "min_text/too_little_text": 1}
    assert total["input"] == 15 and total["kept"] == 11 and balanced(total)
    records = {r["key"]: (r, pdf) for r, pdf in removed_records(pdfa_output)}
    locked, pdf = records["0002c_locked"]
    assert locked["removed_reason"] == "encrypted" and locked["source_file"] == "pdfa-eng-train-0000.tar"
    with tarfile.open(PDFA / "pdfa-eng-train-0000.tar") as tar:
        assert pdf == tar.extractfile("0002c_locked.pdf").read()  # a PDF removed whole is kept once, as read
    number, no_pdf = records["0005f_number"]
    assert number["page"] == 0 and number["text"] == "7" and no_pdf is None


def test_too_many_pages_and_dpi(tmp_path):
    result, log = run_pdfa("--input", str(PDFA), "--output", str(tmp_path / "out"), "--steps", "pages",
                           "--max-pages", "5", "--shards", "1-1", "--dpi", "50")
    assert result.returncode == 0, log
    total = summary(tmp_path / "out")
    assert total["removed"] == {"pages/too_many_pages": 6, "pages/empty": 1} and total["kept"] == 2
    assert balanced(total)
    sizes = {Image.open(io.BytesIO(s["jpg"])).size for s in kept_samples(tmp_path / "out").values()}
    assert sizes == {(425, 550)}  # US Letter (612 x 792 pt) at 50 dpi: under the 980 px bound


def test_decontam_removes_a_page_quoting_an_evaluation_item(tmp_path):
    result, log = run_pdfa("--input", str(PDFA), "--output", str(tmp_path / "out"), "--shards", "1-1",
                           "--decontam-index", sample_decontam_index())  # default steps: pages,min_text,decontam
    assert result.returncode == 0, log
    total = summary(tmp_path / "out")
    assert total["removed"] == {"pages/empty": 1, "min_text/too_little_text": 1, "decontam/eval_text": 1}
    assert total["kept"] == 6 and balanced(total)
    quoting = [r for r, _ in removed_records(tmp_path / "out") if r["removed_step"] == "decontam"]
    assert [(q["key"], q["page"]) for q in quoting] == [("0007h_quoting", 0)]
    assert "decontam: 1 match(es)" in result.stdout and (tmp_path / "out" / "decontam_report.md").is_file()


def test_idl_flat_json(tmp_path):
    result, log = run_pdfa("--input", str(IDL), "--output", str(tmp_path / "idl"), "--format", "idl",
                           "--steps", "pages,min_text")
    assert result.returncode == 0, log
    samples = kept_samples(tmp_path / "idl")
    assert sorted(samples) == ["ffbb0001_00000", "ffbb0001_00001", "ffbb0002_00000"]
    invoice = samples["ffbb0002_00000"]["json"]
    assert invoice["text_source"] == "json" and len(invoice["lines"]["text"]) == 4
    assert invoice["lines"]["bbox"][0][:2] == [0.1176, 0.0758]
    # read as PDFA, the flat pages do not describe lines: the text comes from the PDF instead
    result, log = run_pdfa("--input", str(IDL), "--output", str(tmp_path / "as_pdfa"), "--steps", "pages")
    assert result.returncode == 0, log
    assert {s["json"]["text_source"] for s in kept_samples(tmp_path / "as_pdfa").values()} == {"pdf"}


def test_shards_and_resume_match_one_run(tmp_path, pdfa_output):
    split = tmp_path / "split"
    for shards in ("0-0", "1-1"):
        result, log = run_pdfa("--input", str(PDFA), "--output", str(split), "--steps", "pages,min_text",
                               "--shards", shards)
        assert result.returncode == 0, log
    for kind in ("data", "removed"):
        for one in sorted((pdfa_output / kind).glob("*.tar")):
            assert (split / kind / one.name).read_bytes() == one.read_bytes(), one
    result, log = run_pdfa("--input", str(PDFA), "--output", str(split), "--steps", "pages,min_text")
    assert result.returncode == 0 and "already done" in log
    assert summary(split) == summary(pdfa_output)
    result, log = run_pdfa("--input", str(PDFA), "--output", str(split), "--steps", "pages,min_text",
                           "--max-side", "512")
    assert result.returncode == 2 and len(log.strip().splitlines()) == 1 and "--max-side" in log


def _hostile_tar(path: Path, good_pdf: bytes) -> None:
    with tarfile.open(path, "w") as tar:
        for name in ("../escape.pdf", "/abs/olute.pdf", "inner/../sneaky.pdf"):
            info = tarfile.TarInfo(name)
            info.size = len(good_pdf)
            tar.addfile(info, io.BytesIO(good_pdf))
        link = tarfile.TarInfo("linked.pdf")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        hard = tarfile.TarInfo("hard.pdf")
        hard.type, hard.linkname = tarfile.LNKTYPE, "../escape.pdf"
        tar.addfile(hard)
        deep = b'{"pages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        for name, data in (("good.pdf", good_pdf), ("good.json", deep), ("nopdf.json", pdfa_json([["x"]]))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_hostile_members_skipped_and_counted(tmp_path):
    inputs = tmp_path / "in" / "deep"
    inputs.mkdir(parents=True)
    _hostile_tar(inputs / "hostile.tar", make_pdf([["A page with enough words to be kept here"]]))
    result, log = run_pdfa("--input", str(inputs), "--output", str(tmp_path / "out"), "--steps", "pages,min_text")
    assert result.returncode == 0, log
    total = summary(tmp_path / "out")
    assert total["removed"] == {"read/unreadable_row": 6} and total["kept"] == 1 and balanced(total)
    causes = sorted(r["unreadable"] for r, _ in removed_records(tmp_path / "out"))
    assert causes == ["link_or_special_member", "link_or_special_member", "no_pdf", "unsafe_member_name",
                      "unsafe_member_name", "unsafe_member_name"]
    assert not (tmp_path / "in" / "escape.pdf").exists() and not list(tmp_path.rglob("olute.pdf"))
    good = kept_samples(tmp_path / "out")["good_00000"]["json"]  # its JSON nests too deeply: text from the PDF
    assert good["text_source"] == "pdf" and good["text"] == "A page with enough words to be kept here"


def test_bad_tars(tmp_path):
    (tmp_path / "notar").mkdir()
    (tmp_path / "notar" / "x.tar").write_bytes(b"this is not a tar file" * 40)
    result, log = run_pdfa("--input", str(tmp_path / "notar"), "--output", str(tmp_path / "o1"))
    assert result.returncode == 2 and "x.tar: not a readable tar file" in log and "Traceback" not in log
    (tmp_path / "cut").mkdir()
    whole = (PDFA / "pdfa-eng-train-0000.tar").read_bytes()
    (tmp_path / "cut" / "cut.tar").write_bytes(whole[:len(whole) // 2 + 100])
    result, log = run_pdfa("--input", str(tmp_path / "cut"), "--output", str(tmp_path / "o2"), "--steps", "pages")
    assert result.returncode == 1 and "cut.tar: unreadable tar" in log
    assert not list((tmp_path / "o2").glob("data/*.tar"))  # a failed shard leaves no output under a final name


def test_member_over_the_cap_is_not_read(tmp_path):
    write_tar(tmp_path / "t.tar", [("a.pdf", b"x" * 5000), ("a.json", b"{}"), ("b.pdf", b"y" * 10)])
    with open(tmp_path / "t.tar", "rb") as stream:
        samples = list(iter_samples(stream, lambda name: True, max_member_bytes=1000))
    assert [(s.key, s.problem, s.fields) for s in samples] == [("a", "member_too_large", {}),
                                                               ("b", None, {"pdf": b"y" * 10})]


@pytest.mark.parametrize("name, expected", [
    ("0001.pdf", ("0001", "pdf")), ("dir/a.b.json", ("dir/a", "b.json")), ("x.y/z.tif", ("x.y/z", "tif")),
    ("noext", None), (".hidden", None)])
def test_keys_split_as_webdataset_does(name, expected):
    from webdataset.tariterators import base_plus_ext

    assert split_name(name) == expected
    assert (base_plus_ext(name) if expected else None) == expected


def test_json_that_is_not_pages_reads_as_none():
    assert parse_pages(b'{"pages": [{"lines": {"text": ["a"]}}]}') == [{"lines": {"text": ["a"]}}]
    for bad in (b"[1]", b'{"pages": 3}', b"\xff\xfe", b"[" * 200_000, None):
        assert parse_pages(bad) is None


def test_pdf_reasons_do_not_depend_on_the_file_before():
    """PDFium leaves its last error in place: an empty PDF read after a corrupt or encrypted one is still empty."""
    from filters.pdf_pages import count_pages

    blank, corrupt = make_pdf([]), b"%PDF-1.4\nnot a body\n%%EOF\n"
    encrypted = make_pdf([["locked"]], encrypted=True)
    for before, reason in ((corrupt, "corrupt"), (encrypted, "encrypted"), (blank, "empty")):
        assert count_pages(before) == reason
        assert count_pages(blank) == "empty" and count_pages(make_pdf([["a"], ["b"]])) == 2


def test_language_step_by_format(tmp_path):
    from pipelines.cli import build_parser, parse_steps
    from pipelines.pdfa import SPEC

    def default_steps(*argv):
        args = build_parser(SPEC).parse_args(["--output", "o", *argv])
        return ",".join(parse_steps(args.steps, SPEC, args))

    assert default_steps() == "pages,min_text,decontam"
    assert default_steps("--format", "idl") == "pages,min_text,language,decontam"
    assert default_steps("--format", "idl", "--steps", "pages") == "pages"
    model = sample_path("models", "tiny-lid", "model.bin")
    result, log = run_pdfa("--input", str(IDL), "--output", str(tmp_path / "idl"), "--format", "idl",
                           "--steps", "pages,language", "--lang-model", model, "--lang", "fr")
    assert result.returncode == 0, log
    assert summary(tmp_path / "idl")["removed"] == {"language/wrong_language": 3}  # English memos, French wanted


def test_each_page_rendered_from_its_own_pdf():
    """A sample that reuses the memory (the id()) of the sample before it is still another PDF: the renderer once
    remembered only the id of the open sample, and rendered the new page from the old PDF."""
    from datatrove.data import Document

    from filters.pdf_pages import KEY, PAGE, PAGES, SAMPLE_KEY, PdfPageRenderer

    def page_of(fields: dict, n: int) -> Document:
        return Document(text="", id=str(n), metadata={KEY: f"k{n}", PAGE: 0, PAGES: 1, SAMPLE_KEY: fields})

    first, second = (make_pdf([[f"document number {n} alone on its page"]]) for n in (0, 1))
    renderer = PdfPageRenderer(max_side=64)
    fields = {"pdf": first}
    doc, freed = page_of(fields, 0), id(fields)
    assert renderer.filter(doc) is True and doc.text == "document number 0 alone on its page"
    del doc, fields
    held = [{"pdf": second}]  # CPython gives a freed dict's memory to a new dict: look for one with the old id
    while id(held[-1]) != freed and len(held) < 10_000:  # (none while the renderer holds the open sample)
        held.append({"pdf": second})
    fields = held[-1]
    doc = page_of(fields, 1)
    assert renderer.filter(doc) is True and doc.text == "document number 1 alone on its page"
    renderer._close()


def test_pages_always_runs(tmp_path):
    """Pages are what the other steps and the writer work on: `--steps min_text` still renders them (it crashed
    every shard before)."""
    result, log = run_pdfa("--input", str(PDFA), "--output", str(tmp_path / "o"), "--steps", "min_text")
    assert result.returncode == 0, log
    assert "steps pages,min_text" in result.stderr and kept_samples(tmp_path / "o")
