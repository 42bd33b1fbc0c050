"""A datatrove filter that judges documents in batches (models, HTTP, index lookups) and one at a time alike."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class BatchedFilter(BaseFilter):
    """Subclasses implement `filter_batch`; `filter(doc)` is a batch of one, so both give the same answers."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]
