"""`min_text`: remove PDF pages with too little text to teach reading (covers, blank or figure-only pages)."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

# Our default, not the paper's: the Idefics2 paper gives no text cut for PDF pages. Five whitespace-separated
# words keeps a sparse slide or form and drops a page that is a lone title, page number or stray OCR token.
DEFAULT_MIN_WORDS = 5


class MinTextFilter(BaseFilter):
    """Removes a page whose text has fewer than `min_words` whitespace-separated words (`too_little_text`).
    Stats: `words` (total words of the pages judged)."""

    name = "min_text"

    def __init__(self, min_words: int = DEFAULT_MIN_WORDS, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        if min_words < 0:
            raise ValueError(f"min_words must be >= 0, not {min_words}")
        self.min_words = min_words

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        words = len(doc.text.split())
        self.stat_update("words", value=words)
        return True if words >= self.min_words else (False, "too_little_text")
