"""`pages`: render each PDF page to a JPEG and give it its text, or remove it with the reason.

The reader has already split a PDF into page Documents (metadata `key`, `page`, `pages`, and the sample's
`pdf`/`json` bytes under `pdf_sample`, shared by its pages). This step opens each PDF once (pages of one PDF
arrive together), renders the page with PDFium (pypdfium2: Apache-2.0/BSD, wheels with no system library)
to a longest side of `max_side` px (the Idefics2 paper trains stage 2 on images up to 980 px), and takes the
page's text from the sample's JSON lines, in their reading order; a sample with no JSON, or a page the JSON
does not describe, falls back to the PDF's own text layer (`text_source: pdf`).
"""

from __future__ import annotations

import io
import json
import math

from datatrove.data import Document, Media, MediaType
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

SAMPLE_KEY = "pdf_sample"  # metadata: the sample's fields, {"pdf": bytes, "json": bytes}, shared by its pages
KEY, PAGE, PAGES = "key", "page", "pages"  # metadata: sample key, page number (0-based), page count of the PDF
PDF_ERROR_KEY = "pdf_error"  # metadata: why the PDF could not be paged: encrypted, corrupt, empty
PAGE_JSON_KEY = "page_json"  # metadata this step sets: what the kept sample's .json holds
JSON_FORMATS = ("pdfa", "idl")
DEFAULT_MAX_PAGES = 3000  # the pixparse/idl-wds card: "In each pdf, there may be from 1 to up to 3000 pages"


# PDFium's load errors (fpdfview.h: FPDF_ERR_FILE 2, FORMAT 3, PASSWORD 4, SECURITY 5). PDFium keeps the last
# error and does not clear it, and it sets none when it declines a file whose page tree has no page.
_ENCRYPTED_ERRORS = (4, 5)  # a password we do not have, or a security handler PDFium does not support
_FILE_ERROR = 2  # never set by a load from memory: left in place beforehand, it shows that the load set nothing


def load_problem(pdf: bytes) -> str:
    """Why PDFium will not load `pdf`: `encrypted`, `empty` (it set no error: no page) or `corrupt`. The error
    state is first set to FPDF_ERR_FILE (a failed open of a path that does not exist), so a stale code from an
    earlier file cannot leak into this one's reason."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pdfium_c.FPDF_LoadDocument(b"/nonexistent/idefics2-recipe-reset.pdf", None)
    try:
        pdfium.PdfDocument(pdf).close()
        return "corrupt"  # loads now: it failed for another reason before (not expected)
    except pdfium.PdfiumError as error:
        code = getattr(error, "err_code", None)
    return "encrypted" if code in _ENCRYPTED_ERRORS else "empty" if code == _FILE_ERROR else "corrupt"


def count_pages(pdf: bytes) -> int | str:
    """The PDF's page count, or why it cannot be opened. PDFium reads the xref and the page tree only, and takes
    the tree's `/Count` on trust: a page tree that declares pages it does not have (its last page will not load)
    is `corrupt`, not thousands of page records made from a few hundred bytes."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(pdf)
    except pdfium.PdfiumError:
        return load_problem(pdf)
    try:
        pages = len(document)
        if pages:
            document[pages - 1].close()
        return pages
    except pdfium.PdfiumError:
        return "corrupt"
    finally:
        document.close()


def _strings(value: object) -> list[str] | None:
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _boxes(value: object, n: int) -> list[list[float]]:
    """Boxes `[left, top, width, height]`, one per text; anything else (hostile or missing) reads as none."""
    ok = (isinstance(value, list) and len(value) == n and
          all(isinstance(b, list) and len(b) == 4 and all(isinstance(x, (int, float)) and math.isfinite(x)
                                                          for x in b) for b in value))
    return value if ok else []


def _texts_and_boxes(group: object) -> dict | None:
    if not isinstance(group, dict) or (texts := _strings(group.get("text"))) is None:
        return None
    return {"text": texts, "bbox": _boxes(group.get("bbox"), len(texts))}


def json_page(pages: list, page: int, json_format: str) -> dict | None:
    """`{"lines": {...}, "words": {...}}` of a page of the sample JSON, or None when it does not describe it.
    PDFA: `lines` and `words` groups; IDL: the same, or the page's own flat `text` and `bbox` lists."""
    entry = pages[page] if page < len(pages) else None
    if not isinstance(entry, dict):
        return None
    lines = _texts_and_boxes(entry.get("lines"))
    if lines is None and json_format == "idl":
        lines = _texts_and_boxes(entry)
    if lines is None:
        return None
    return {"lines": lines, "words": _texts_and_boxes(entry.get("words")) or {"text": [], "bbox": []}}


def parse_pages(data: bytes | None) -> list | None:
    """The JSON's `pages` list; None for no JSON or one that is not `{"pages": [...]}` (hostile: too deep)."""
    if data is None:
        return None
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    pages = parsed.get("pages") if isinstance(parsed, dict) else None
    return pages if isinstance(pages, list) else None


class PdfPageRenderer(BaseFilter):
    """Renders PDF pages and attaches their text and word boxes.

    Removal reasons: `encrypted`, `corrupt`, `empty` (the PDF could not be paged), `too_many_pages` (every page
    of a PDF over `max_pages`), `bad_page_size` (a page with no area or absurd size), `render_failed`.
    Stats: `text_from/json`, `text_from/pdf`, `json/unreadable` (a sample JSON that is not `{"pages": [...]}`).
    """

    name = "pages"
    _requires_dependencies = ["pypdfium2"]

    def __init__(self, max_pages: int = DEFAULT_MAX_PAGES, max_side: int = 980, dpi: float | None = None,
                 jpeg_quality: int = 90, json_format: str = "pdfa", exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        if json_format not in JSON_FORMATS:
            raise ValueError(f"json_format must be one of {JSON_FORMATS}, not {json_format!r}")
        self.max_pages, self.max_side, self.dpi = max_pages, max_side, dpi
        self.jpeg_quality, self.json_format = jpeg_quality, json_format
        self._open_for: dict | None = None  # the sample whose PDF is open (held, so it is compared by identity)
        self._pdf, self._pages = None, None

    def run(self, data, rank: int = 0, world_size: int = 1):
        try:
            yield from super().run(data, rank, world_size)
        finally:
            self._close()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if error := doc.metadata.get(PDF_ERROR_KEY):
            return False, error
        if doc.metadata[PAGES] > self.max_pages:
            return False, "too_many_pages"
        pdf = self._open(doc.metadata[SAMPLE_KEY])
        if isinstance(pdf, str):  # the reader could count its pages, yet it fails now: corrupt beyond the tree
            return False, pdf
        return self._page(doc, pdf)

    def _open(self, sample: dict):
        """The sample's open PdfDocument (kept while its pages go by) and its parsed JSON pages."""
        import pypdfium2 as pdfium

        if self._open_for is not sample:
            self._close()
            self._open_for = sample
            try:
                self._pdf = pdfium.PdfDocument(sample["pdf"])
            except pdfium.PdfiumError:
                self._pdf = load_problem(sample["pdf"])
            self._pages = parse_pages(sample.get("json"))
            if sample.get("json") is not None and self._pages is None:
                self.stat_update("json/unreadable")
        return self._pdf

    def _close(self) -> None:
        if self._pdf is not None and not isinstance(self._pdf, str):
            self._pdf.close()
        self._pdf, self._pages, self._open_for = None, None, None

    def _page(self, doc: Document, pdf) -> bool | tuple[bool, str]:
        import pypdfium2 as pdfium

        number, page = doc.metadata[PAGE], None
        try:
            page = pdf[number]
            width, height = page.get_size()
            if not (0 < width < 1e5 and 0 < height < 1e5):  # PDF user units; 1e5 pt is ~35 m
                return False, "bad_page_size"
            image = page.render(scale=self._scale(width, height), rev_byteorder=True).to_pil()  # RGB, no swap
            found = self._json_text(number)
            text_layer = None if found else self._text_layer(page)
        except pdfium.PdfiumError:
            return False, "render_failed"
        finally:
            if page is not None:
                page.close()
        jpeg = io.BytesIO()
        (image if image.mode == "RGB" else image.convert("RGB")).save(jpeg, format="JPEG", quality=self.jpeg_quality)
        self._attach(doc, jpeg.getvalue(), image.size, found, text_layer)
        return True

    @staticmethod
    def _text_layer(page) -> str:
        textpage = page.get_textpage()
        try:
            return textpage.get_text_range()
        finally:
            textpage.close()

    def _scale(self, width: float, height: float) -> float:
        """Pixels per PDF point: longest side `max_side`, and no more than `dpi` when given (72 pt an inch)."""
        scale = self.max_side * (1 - 1e-9) / max(width, height)  # PDFium rounds sizes up: 980.0000001 -> 981
        return min(scale, self.dpi / 72) if self.dpi else scale

    def _json_text(self, number: int) -> dict | None:
        return json_page(self._pages, number, self.json_format) if self._pages is not None else None

    def _attach(self, doc: Document, jpeg: bytes, size: tuple[int, int], found: dict | None,
                text_layer: str | None) -> None:
        if found:
            text, source = "\n".join(found["lines"]["text"]), "json"
        else:
            text, source = text_layer.replace("\r\n", "\n").replace("\r", "\n").strip(), "pdf"
            found = {"lines": {"text": [], "bbox": []}, "words": {"text": [], "bbox": []}}
        self.stat_update(f"text_from/{source}")
        doc.text = text
        doc.media = [Media(id=doc.id, type=MediaType.IMAGE, url=f"{doc.metadata[KEY]}#page={doc.metadata[PAGE] + 1}",
                           media_bytes=jpeg, metadata={"width": size[0], "height": size[1]})]
        origin = doc.metadata.get("origin") or {}
        doc.metadata[PAGE_JSON_KEY] = {
            "key": doc.metadata[KEY], "page": doc.metadata[PAGE], "pages": doc.metadata[PAGES], "text": text,
            "text_source": source, "lines": found["lines"], "words": found["words"], "width": size[0],
            "height": size[1], "source_file": origin.get("file"), "source_sample": origin.get("row")}
