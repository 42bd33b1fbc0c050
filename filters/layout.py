"""The interleaved layout of a Document: which positions hold a text and which an image.

An OBELICS row is two parallel lists, `images` and `texts`, with exactly one of them set at each position (the
`HuggingFaceM4/OBELICS` dataset card). A Document keeps that order in `metadata["texts"]`: the full-length list of
texts with `None` at each image position; the images themselves are `doc.media`, in the same order. `doc.text` is
the texts joined by "\n\n", so datatrove's text steps see the prose. Steps that remove images go through
`remove_images` so the media list and the layout never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from datatrove.data import Document

TEXTS_KEY = "texts"
LAYOUT_ERROR_KEY = "layout_error"
TEXT_SEPARATOR = "\n\n"  # OBELICS joins consecutive texts with a blank line (its dataset card)


def layout_problem(images: object, texts: object) -> str | None:
    """Why two parallel lists cannot be an interleaved document, or None if they can.

    The rules of the OBELICS dataset card: both are lists of the same length, and each position holds exactly
    one of an image URL and a text.
    """
    if not isinstance(images, Sequence) or not isinstance(texts, Sequence):
        return "not_a_list"
    if len(images) != len(texts):
        return "length_mismatch"
    for image, text in zip(images, texts):
        if image is not None and text is not None:
            return "text_and_image_at_one_position"
        if image is None and text is None:
            return "empty_position"
    return None


def layout_texts(doc: Document) -> list[str | None]:
    """The document's full-length texts list (None at image positions). A document from another reader (no
    `metadata["texts"]`) is read as its text followed by its images, the order datatrove's media list implies."""
    if TEXTS_KEY not in doc.metadata:
        doc.metadata[TEXTS_KEY] = ([doc.text] if doc.text else []) + [None] * len(doc.media)
    return doc.metadata[TEXTS_KEY]


def join_texts(texts: Iterable[str | None]) -> str:
    return TEXT_SEPARATOR.join(t for t in texts if t is not None)


def merge_consecutive_texts(texts: list[str | None]) -> list[str | None]:
    """Merge runs of adjacent texts into one, joined by "\n\n" (the OBELICS rule); images stay in place."""
    merged: list[str | None] = []
    for text in texts:
        if text is not None and merged and merged[-1] is not None:
            merged[-1] = merged[-1] + TEXT_SEPARATOR + text
        else:
            merged.append(text)
    return merged


def remove_images_or_document(doc: Document, indices: Iterable[int], reason: str) -> bool | tuple[bool, str]:
    """Remove the images; the document stays (True) only if it still has one, else (False, reason). Removing
    nothing keeps the document as it is."""
    indices = list(indices)
    if not indices:
        return True
    remove_images(doc, indices)
    return True if doc.media else (False, reason)


def remove_images(doc: Document, indices: Iterable[int]) -> None:
    """Remove `doc.media[i]` for each i, and its slot in the layout; texts left adjacent are merged."""
    drop = set(indices)
    if not drop:
        return
    texts: list[str | None] = []
    image_index = 0
    for text in layout_texts(doc):
        if text is None:
            if image_index not in drop:
                texts.append(None)
            image_index += 1
        else:
            texts.append(text)
    doc.media = [m for i, m in enumerate(doc.media) if i not in drop]
    doc.metadata[TEXTS_KEY] = merge_consecutive_texts(texts)
