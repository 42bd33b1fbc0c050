"""`structure`: the OBELICS layout rules, the first step of every interleaved pipeline."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.layout import LAYOUT_ERROR_KEY, TEXTS_KEY, layout_texts, merge_consecutive_texts


class InterleavedStructureFilter(BaseFilter):
    """Keep only documents that are well-formed interleaved documents (the `HuggingFaceM4/OBELICS` dataset card).

    Rules, in order:
      - the row could be read as a layout (the reader records why not: `length_mismatch`,
        `text_and_image_at_one_position`, `empty_position`, `not_a_list`, `bad_metadata`, ...);
      - at least one text (`no_text`) and at least one image (`no_image`).
    Kept documents have consecutive texts merged with "\n\n" (stat `merged_texts`), so the layout alternates.
    """

    name = "structure"

    def __init__(self, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if error := doc.metadata.get(LAYOUT_ERROR_KEY):
            return False, error
        texts = layout_texts(doc)
        if all(t is None for t in texts):
            return False, "no_text"
        if not doc.media:
            return False, "no_image"
        merged = merge_consecutive_texts(texts)
        if len(merged) != len(texts):
            self.stat_update("merged_texts")
            doc.metadata[TEXTS_KEY] = merged
        return True
