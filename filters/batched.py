"""A datatrove filter that judges documents in batches (models, HTTP, index lookups) and one at a time alike."""

from __future__ import annotations

import contextlib

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.utils.batching import batched
from datatrove.utils.typeshelper import StatHints


class BatchedFilter(BaseFilter):
    """Subclasses implement `filter_batch`; `filter(doc)` is a batch of one, so both give the same answers.

    `run` is datatrove's filter loop plus image accounting: `images_removed` counts the images a judgment took
    out of a document (the images of documents removed whole are counted where they are recorded).
    """

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            for batch in batched(data, self.batch_size):
                images_before = [len(doc.media) for doc in batch]
                with self.track_time("batch" if self.batch_size > 1 else None):
                    results = self.filter_batch(batch)
                for doc, before, result in zip(batch, images_before, results):
                    yield from self.route(doc, result, writer, rank, before)

    def route(self, doc: Document, result, writer, rank: int, images_before: int) -> DocumentsPipeline:
        """Forward or record one judged document, with datatrove's stats; count the images the judgment removed."""
        if images_before > len(doc.media):
            self.stat_update("images_removed", value=images_before - len(doc.media))
        self.stat_update(StatHints.total)
        keep, reason = get_filter_result(result)
        if keep:
            self.stat_update(StatHints.forwarded)
            self.update_doc_stats(doc)
            yield doc
            return
        self.stat_update(StatHints.dropped)
        if reason:
            self.stat_update(f"dropped_{reason}")
            doc.metadata["filter_reason"] = reason
        if writer:
            writer.write(doc, rank)
