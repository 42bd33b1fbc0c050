"""OBELICS rows <-> Documents, losslessly (schema: the `HuggingFaceM4/OBELICS` dataset card).

A row is `images` (list of URL or null), `texts` (list of text or null), `metadata` (a JSON list, one entry per
position: the image's metadata, null at text positions) and `general_metadata` (a JSON object: `url`,
`warc_filename`, ...). The Document keeps the layout as `filters.layout` describes; the parsed JSON is in
`Media.metadata` and `metadata["general_metadata"]`, and the source strings are kept so that a document no step
changed is written back byte for byte. A row that cannot be laid out is carried as it is, with the reason under
`metadata["layout_error"]`, for the `structure` step to remove and record.
"""

from __future__ import annotations

import copy
import json

import pyarrow as pa
from datatrove.data import Document, Media, MediaType

from filters.layout import LAYOUT_ERROR_KEY, TEXTS_KEY, join_texts, layout_problem
from pipelines.sources import ParquetSource, RowFormat

OBELICS_SCHEMA = pa.schema([
    ("images", pa.list_(pa.string())),
    ("metadata", pa.string()),
    ("general_metadata", pa.string()),
    ("texts", pa.list_(pa.string())),
])
OBELICS_HUB_INPUT = "hf://datasets/HuggingFaceM4/OBELICS/data"  # config `default`, files data/train-*.parquet

GENERAL_METADATA_KEY = "general_metadata"
SOURCE_KEY = "obelics_source"  # the row's original JSON strings, and the whole row if it could not be laid out


def _loads(text: str | None, default: object) -> object:
    """Parsed JSON; raises ValueError for text that is not JSON or nests deeper than the parser's recursion limit."""
    if text is None:
        return default
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _bad_url(url: object) -> bool:
    """A URL that is not a string, or holds whitespace or control characters (a newline would smuggle more URLs
    into the opt-out service's newline-separated request body)."""
    return not isinstance(url, str) or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url)


def _parse_row(row: dict) -> tuple[list[dict | None], dict] | str:
    """The parsed per-position metadata and general metadata, or the reason the row cannot be laid out."""
    problem = layout_problem(row["images"], row["texts"])
    if problem:
        return problem
    if any(_bad_url(url) for url in row["images"] if url is not None):
        return "bad_image_url"
    try:
        image_metadata = _loads(row["metadata"], [None] * len(row["images"]))
    except (TypeError, ValueError):
        return "bad_metadata_json"
    if not isinstance(image_metadata, list) or len(image_metadata) != len(row["images"]):
        return "bad_metadata_length"
    try:
        general = _loads(row["general_metadata"], {})
    except (TypeError, ValueError):
        return "bad_general_metadata_json"
    if not isinstance(general, dict):
        return "bad_general_metadata_json"
    if general.get("url") is not None and _bad_url(general["url"]):
        return "bad_document_url"
    return image_metadata, general


def row_to_document(row: dict, doc_id: str) -> Document:
    parsed = _parse_row(row)
    if isinstance(parsed, str):
        texts = row["texts"] if isinstance(row["texts"], list) else []
        return Document(text=join_texts(t for t in texts if isinstance(t, str)), id=doc_id,
                        metadata={LAYOUT_ERROR_KEY: parsed, SOURCE_KEY: dict(row)})
    image_metadata, general = parsed
    # what the writer will compare against: a missing entry at an image position reads as {}, text positions
    # as null (so a row whose metadata said otherwise is rewritten, not passed off as unchanged)
    metadata_read = [(m if isinstance(m, dict) else {}) if url is not None else None
                     for m, url in zip(image_metadata, row["images"])]
    media = [Media(id=f"{doc_id}/{pos}", type=MediaType.IMAGE, url=url, metadata=copy.deepcopy(metadata_read[pos]))
             for pos, url in enumerate(row["images"]) if url is not None]
    return Document(
        text=join_texts(row["texts"]),
        id=doc_id,
        media=media,
        metadata={
            "url": general.get("url"),  # where datatrove's URL filters look
            GENERAL_METADATA_KEY: general,
            TEXTS_KEY: list(row["texts"]),
            SOURCE_KEY: {"metadata": row["metadata"], "general_metadata": row["general_metadata"],
                         "metadata_read": metadata_read, "general_metadata_read": copy.deepcopy(general)},
        },
    )


def _json_or_source(value: object, source: str | None, read_as: object) -> str | None:
    """The source string (or null) when reading it gave exactly `value` (`read_as`), so unchanged documents
    round-trip byte for byte; otherwise `value` as JSON."""
    return source if read_as == value else json.dumps(value)


def document_to_row(doc: Document) -> dict:
    if LAYOUT_ERROR_KEY in doc.metadata:
        return dict(doc.metadata[SOURCE_KEY])
    images, metadata = [], []
    media = iter(doc.media)
    for text in doc.metadata[TEXTS_KEY]:
        image = next(media) if text is None else None
        images.append(image.url if image else None)
        metadata.append(image.metadata if image else None)
    source = doc.metadata.get(SOURCE_KEY, {})
    return {
        "images": images,
        "metadata": _json_or_source(metadata, source.get("metadata"), source.get("metadata_read")),
        "general_metadata": _json_or_source(doc.metadata[GENERAL_METADATA_KEY], source.get("general_metadata"),
                                            source.get("general_metadata_read")),
        "texts": list(doc.metadata[TEXTS_KEY]),
    }


OBELICS_FORMAT = RowFormat(schema=OBELICS_SCHEMA, to_document=row_to_document, to_row=document_to_row)
OBELICS_SOURCE = ParquetSource(OBELICS_FORMAT)
