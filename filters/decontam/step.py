"""`decontam`: remove training content that matches an evaluation set, and say which item it matched."""

from __future__ import annotations

import json

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.decontam.index import DecontaminationIndex, Match
from filters.batched import BatchedFilter
from filters.layout import remove_images_or_document
from filters.shard_files import shard_name, write_atomically

EVAL_MATCH_KEY = "eval_match"
POLICIES = ("image", "document")


class DecontaminationFilter(BatchedFilter):
    """Match every image (exact pixels, then perceptual hash) and the text (question+answer windows) against a
    `DecontaminationIndex`.

    Policies: `image` (interleaved documents): a matching image is removed from the layout, and a document left
    with none is removed (`eval_images`); `document` (pairs, Cauldron rows): any image match removes the
    document (`eval_image`). A text match removes the document (`eval_text`). Every match is annotated in
    `metadata["eval_match"]`, counted as `match/<benchmark>/<tier>`, and, with `matches_folder`, written per
    shard as JSON lines (document id, image URL, benchmark, split, item, tier, distance) for the run's report.
    Images are hashed from the task's shared working copy (`filters.pixels`), so the decode is paid once for
    all pixel steps; an image that does not decode is kept and counted as `images_unreadable`.
    """

    name = "decontam"

    def __init__(self, index: DecontaminationIndex, policy: str = "image", matches_folder: str | None = None,
                 batch_size: int = 64, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        self.index, self.policy, self.matches_folder = index, policy, matches_folder
        self._records: list[dict] = []

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._records = []
        yield from super().run(data, rank, world_size)
        if self.matches_folder:
            with write_atomically(get_datafolder(self.matches_folder), f"{shard_name(rank)}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self._records)

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        media = [(doc, i, m) for doc in batch for i, m in enumerate(doc.media) if m.media_bytes is not None]
        with self.track_time("batch"):
            image_matches = self.index.match_image_bytes([m.media_bytes for _, _, m in media])
        per_doc: dict[int, dict[int, list[Match]]] = {}
        for (doc, i, _), matches in zip(media, image_matches):
            if matches is None:  # kept: the `images` step decides about broken images; counted here
                self.stat_update("images_unreadable")
            elif matches:
                per_doc.setdefault(id(doc), {})[i] = matches
        return [self._judge(doc, per_doc.get(id(doc), {})) for doc in batch]

    def _record(self, doc: Document, matches: list[Match], url: str | None) -> None:
        for match in matches:
            self.stat_update(f"match/{match.benchmark}/{match.tier}")
            self._records.append({"doc": doc.id, "url": url, **match.to_json()})
        doc.metadata.setdefault(EVAL_MATCH_KEY, []).extend(
            {"url": url, **m.to_json()} for m in matches)

    def _judge(self, doc: Document, image_matches: dict[int, list[Match]]) -> bool | tuple[bool, str]:
        for i, matches in image_matches.items():
            self._record(doc, matches, doc.media[i].url)
        text_matches = self.index.match_text(doc.text) if doc.text else []
        self._record(doc, text_matches, None)
        if text_matches:
            return False, "eval_text"
        if image_matches and self.policy == "document":
            return False, "eval_image"
        self.stat_update("images_removed", value=len(image_matches))
        return remove_images_or_document(doc, image_matches, "eval_images")
