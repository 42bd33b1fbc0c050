"""Build the PDF sample data byte-reproducibly: `pipelines/sample_data/pdfa/` and `pipelines/sample_data/idl/`.

`python scripts/make_pdf_sample.py [--output pipelines/sample_data]`. The PDFs are written by the small PDF
writer below (PDF 1.4: a catalog, a page tree, Helvetica text in content streams, a cross-reference table), no
network. PDFA shards (webdataset, `<key>.pdf` + `<key>.json`, JSON `{"pages": [{"lines": {...}, "words": {...}}]}`
as pixparse/pdfa-eng-wds) hold: a 3-page document whose JSON lines are in reading order while its content stream
draws them in another order, one with no JSON (text-layer fallback), an encrypted one, a corrupt one, one with no
page, one whose only text is a page number, a 6-page one, and one quoting an item of the sample evaluation set.
The IDL shard (pixparse/idl-wds: `.pdf`, `.tif`, `.json`, `.ocr`) has flat per-page JSON (`text`, `bbox` lists).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

PAGE_W, PAGE_H = 612, 792  # US Letter, in points
FONT_SIZE, LEFT, TOP, LEADING = 12, 72, 720, 18


def _escape(text: str) -> bytes:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


def _content(lines: list[str], order: list[int]) -> bytes:
    """A content stream drawing `lines[i]` at row i (top to bottom), in the order `order` gives."""
    ops = [b"BT", f"/F1 {FONT_SIZE} Tf".encode()]
    for i in order:
        ops += [f"1 0 0 1 {LEFT} {TOP - i * LEADING} Tm".encode(), b"(" + _escape(lines[i]) + b") Tj"]
    return b"\n".join([*ops, b"ET"])


def make_pdf(pages: list[list[str]], draw_reversed: bool = False, encrypted: bool = False) -> bytes:
    """A PDF whose page i shows `pages[i]`, one line per row. `encrypted`: a Standard security handler whose
    user password is not empty (PDFium asks for a password)."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 "
                            b"/BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    kids = []
    for lines in pages:
        order = list(range(len(lines)))[::-1] if draw_reversed else list(range(len(lines)))
        stream = _content(lines, order)
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources << /Font << /F1 3 0 R >> "
                       b">> /Contents %d 0 R >>" % (PAGE_W, PAGE_H, len(objects)))
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    trailer_extra = b""
    if encrypted:
        digest = hashlib.sha256(b"sample").hexdigest()[:64].encode()
        objects.append(b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -44 >>" % (digest, digest[::-1]))
        trailer_extra = b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (len(objects), digest[:32], digest[:32])
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % offset for offset in offsets)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer_extra,
                                                                                      xref))
    return out.getvalue()


def _boxes(lines: list[str]) -> list[list[float]]:
    """`[left, top, width, height]` normalised to the page, as PDFA's JSON gives them (approximate widths)."""
    return [[round(LEFT / PAGE_W, 4), round((PAGE_H - TOP + i * LEADING - FONT_SIZE) / PAGE_H, 4),
             round(len(text) * FONT_SIZE * 0.5 / PAGE_W, 4), round(FONT_SIZE / PAGE_H, 4)]
            for i, text in enumerate(lines)]


def pdfa_json(pages: list[list[str]]) -> bytes:
    """PDFA's layout: lines (reading order) and words, each with normalised boxes."""
    entries = []
    for lines in pages:
        words = [w for line in lines for w in line.split()]
        slices, start = [], 0
        for line in lines:
            slices.append([start, start + len(line.split())])
            start += len(line.split())
        entries.append({"images_bbox": [], "images_bbox_no_text_overlap": [],
                        "lines": {"text": lines, "bbox": _boxes(lines), "score": [1.0] * len(lines),
                                  "word_slice": slices},
                        "words": {"text": words, "bbox": [[0.1, 0.1, 0.05, 0.015]] * len(words),
                                  "score": [1.0] * len(words),
                                  "line_pos": [[i, j] for i, line in enumerate(lines)
                                               for j in range(len(line.split()))]}})
    return json.dumps({"pages": entries}, sort_keys=True).encode()


def idl_json(pages: list[list[str]]) -> bytes:
    """IDL's flatter per-page layout: `text` and `bbox` lists on the page."""
    return json.dumps({"pages": [{"text": lines, "bbox": _boxes(lines), "score": [0.99] * len(lines)}
                                 for lines in pages]}, sort_keys=True).encode()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar with fixed metadata, so the same members give the same bytes."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def _text(doc: str, page: int, n: int = 3) -> list[str]:
    return [f"{doc} page {page + 1} line {i + 1}: the quick brown fox reads documents" for i in range(n)]


def pdfa_shards() -> list[list[tuple[str, bytes]]]:
    three = [_text("Report", p) for p in range(3)]
    plain = [["Text layer only: this sample ships no JSON at all", "second line of the text layer"]]
    six = [_text("Manual", p, 2) for p in range(6)]
    numbered = [["7"]]
    # quotes the sample evaluation set's item leak-text-0 (pipelines/sample_data/eval): decontam removes it
    quoting = [["Python language reference, lexical analysis, formatted string literals:",
                "A string literal with \"'f'\" or \"'F'\" in its prefix is a formatted string literal."]]
    return [
        [("0000a_report.pdf", make_pdf(three, draw_reversed=True)), ("0000a_report.json", pdfa_json(three)),
         ("0001b_plain.pdf", make_pdf(plain)),
         ("0002c_locked.pdf", make_pdf(three[:1], encrypted=True)), ("0002c_locked.json", pdfa_json(three[:1])),
         ("0003d_broken.pdf", b"%PDF-1.4\nthis is not a PDF body at all\n%%EOF\n"),
         ("0003d_broken.json", pdfa_json(three[:1]))],
        [("0004e_blank.pdf", make_pdf([])), ("0004e_blank.json", b'{"pages": []}'),
         ("0005f_number.pdf", make_pdf(numbered)), ("0005f_number.json", pdfa_json(numbered)),
         ("0006g_manual.pdf", make_pdf(six)), ("0006g_manual.json", pdfa_json(six)),
         ("0007h_quoting.pdf", make_pdf(quoting)), ("0007h_quoting.json", pdfa_json(quoting))],
    ]


def idl_shard() -> list[tuple[str, bytes]]:
    from PIL import Image

    members = []
    for key, pages in (("ffbb0001", [_text("Memo", p) for p in range(2)]), ("ffbb0002", [_text("Invoice", 0, 4)])):
        tif = io.BytesIO()
        Image.new("L", (8, 8), 255).save(tif, format="TIFF")
        members += [(f"{key}.json", idl_json(pages)), (f"{key}.ocr", json.dumps(pages).encode()),
                    (f"{key}.pdf", make_pdf(pages)), (f"{key}.tif", tif.getvalue())]
    return members


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "pipelines/sample_data"))
    args = parser.parse_args(argv)
    pdfa, idl = Path(args.output) / "pdfa", Path(args.output) / "idl"
    os.makedirs(pdfa, exist_ok=True)
    os.makedirs(idl, exist_ok=True)
    for number, members in enumerate(pdfa_shards()):
        write_tar(pdfa / f"pdfa-eng-train-{number:04d}.tar", members)
    write_tar(idl / "idl-train-00000.tar", idl_shard())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
