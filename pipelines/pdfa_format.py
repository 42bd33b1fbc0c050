"""PDFA and OCR-IDL webdataset samples <-> page Documents.

Public formats (dataset cards of `pixparse/pdfa-eng-wds` and `pixparse/idl-wds`, and their viewers): tars
`pdfa-eng-train-0000.tar` ... and `idl-train-00000.tar` ...; a sample is `<key>.pdf` plus `<key>.json`
(IDL adds `<key>.tif` and `<key>.ocr`, which we do not read). The JSON is `{"pages": [...]}`, one entry per PDF
page; PDFA's page holds `lines` (`text`, `bbox`, `score`, `word_slice`) and `words` (`text`, `bbox`, `score`,
`line_pos`), lines in reading order, boxes `[left, top, width, height]` normalised to the page. IDL's card says
its Textract OCR was "reshaped into lines organized in reading order, under the key lines", words under
`words`; some IDL pages are flatter (`text` and `bbox` lists on the page itself), which we read as lines.

The unit of accounting is the page: the reader counts a PDF's pages (PDFium reads the page tree, not the
pages) and yields one Document per page, so `input = kept + removed` holds per page. A PDF that cannot be
opened (encrypted, corrupt) or has no page yields one Document carrying `pdf_error`, which the `pages` step
removes with that reason; a sample with no PDF is `unreadable` (removed by the `read` step).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from datatrove.data import Document

from filters.pdf_pages import KEY, PAGE, PAGE_JSON_KEY, PAGES, PDF_ERROR_KEY, SAMPLE_KEY, count_pages
from pipelines.shards import REMOVED_REASON, REMOVED_STEP, SOURCE_FILE, SOURCE_ROW
from pipelines.sources import ORIGIN_KEY, UNREADABLE_KEY
from pipelines.webdataset_source import Sample, SampleFormat, WebDatasetSource

PDFA_HUB_INPUT = "hf://datasets/pixparse/pdfa-eng-wds"  # pdfa-eng-train-0000.tar ... (Hub file list)
IDL_HUB_INPUT = "hf://datasets/pixparse/idl-wds"  # idl-train-00000.tar ... (Hub file list)

FIELDS = ("pdf", "json")
# A page tree claiming more pages than this is removed as one record (`too_many_pages`) instead of one record a
# page: a guard against a hostile PDF, far above the 3,000 pages the IDL card gives as its longest documents.
PAGE_TREE_CEILING = 100_000


def sample_to_documents(sample: Sample, doc_id: str, path: str) -> Iterator[Document]:
    """One Document per page (text and image come in the `pages` step); one flagged Document otherwise."""
    pdf = sample.fields.get("pdf")
    if pdf is None:
        yield Document(text="", id=doc_id, metadata={UNREADABLE_KEY: "no_pdf", KEY: sample.key})
        return
    pages = count_pages(pdf)
    if isinstance(pages, str) or pages == 0 or pages > PAGE_TREE_CEILING:
        problem = pages if isinstance(pages, str) else "empty" if pages == 0 else "too_many_pages"
        yield Document(text="", id=doc_id, metadata={PDF_ERROR_KEY: problem, KEY: sample.key,
                                                     SAMPLE_KEY: sample.fields})
        return
    for page in range(pages):
        yield Document(text="", id=f"{doc_id}/{page:05d}",
                       metadata={KEY: sample.key, PAGE: page, PAGES: pages, SAMPLE_KEY: sample.fields,
                                 ORIGIN_KEY: {"page": page}})


def page_name(doc: Document) -> str:
    """The kept sample's webdataset key: `<document key>_<page>` (the page zero-padded, so tar order is page
    order)."""
    return f"{doc.metadata[KEY]}_{doc.metadata[PAGE]:05d}"


def kept_members(doc: Document) -> list[tuple[str, bytes]]:
    """`<key>_<page>.jpg` (the rendered page) and `<key>_<page>.json` (text, words, lines, page, key)."""
    name = page_name(doc)
    return [(f"{name}.jpg", doc.media[0].media_bytes),
            (f"{name}.json", json.dumps(doc.metadata[PAGE_JSON_KEY], ensure_ascii=False).encode())]


def removed_members(doc: Document, number: int, columns: dict) -> list[tuple[str, bytes]]:
    """`<n>.json`: the record (step, reason, source file, sample number, key, page); plus `<n>.pdf`, the PDF as
    read, when a whole PDF was removed (its pages are not written once per page)."""
    record = {REMOVED_STEP: columns.get(REMOVED_STEP), REMOVED_REASON: columns.get(REMOVED_REASON),
              SOURCE_FILE: columns.get(SOURCE_FILE), SOURCE_ROW: columns.get(SOURCE_ROW),
              KEY: (doc.metadata.get(ORIGIN_KEY) or {}).get("key", doc.metadata.get(KEY)),
              PAGE: doc.metadata.get(PAGE), PAGES: doc.metadata.get(PAGES),
              UNREADABLE_KEY: doc.metadata.get(UNREADABLE_KEY), "text": doc.text}
    members = [(f"{number:08d}.json", json.dumps(record, ensure_ascii=False).encode())]
    pdf = (doc.metadata.get(SAMPLE_KEY) or {}).get("pdf")
    if pdf is not None and doc.metadata.get(PAGE) is None:
        members.append((f"{number:08d}.pdf", pdf))
    return members


PDF_PAGES_FORMAT = SampleFormat(wanted=lambda name: name in FIELDS, to_documents=sample_to_documents,
                                kept_members=kept_members, removed_members=removed_members)
PDF_PAGES_SOURCE = WebDatasetSource(PDF_PAGES_FORMAT)
