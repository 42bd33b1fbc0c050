"""`min_size`: remove images whose shorter side is under a minimum, measured on the decoded image.

The Hugging Face M4 team's LAION-COCO processing for Idefics2 removed pairs whose downloaded image had a width or a
height under 150 px (its `THRESHOLD_MIN_SIDE = 150`, applied to the decoded image's `.size`). A source's declared
size (LAION's `WIDTH`/`HEIGHT`) can disagree with what the URL serves today, so this step reads the size the
`images` step measured when it decoded the download (`original_width`, `original_height` in `Media.metadata`).
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.logging import logger

from filters.batched import BatchedFilter
from filters.layout import remove_images_or_document

IDEFICS2_MIN_SIDE = 150  # px; the M4 team's LAION-COCO small-image filter (THRESHOLD_MIN_SIDE)


class MinImageSizeFilter(BatchedFilter):
    """Remove images whose decoded width or height is under `min_side` pixels.

    Rules: an image with a side under `min_side` is removed (stat `images_too_small`); an image with no decoded
    size (the `images` step did not run before this one, or the size was not an integer) is removed too (stat
    `images_unmeasured`) rather than passed unchecked. A document left with no image is removed: `too_small` if
    any of its images was too small, else `unmeasured`. For an image-text pair that is the pair itself.
    """

    name = "min_size"

    def __init__(self, min_side: int = IDEFICS2_MIN_SIDE, batch_size: int = 256,
                 exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        if min_side < 1:
            raise ValueError(f"min_side must be at least 1, not {min_side}")
        self.min_side = min_side
        self._warned = False

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        return [self._judge(doc) for doc in batch]

    def _judge(self, doc: Document) -> bool | tuple[bool, str]:
        small, unmeasured = [], []
        for index, media in enumerate(doc.media):
            width, height = media.metadata.get("original_width"), media.metadata.get("original_height")
            if not _is_size(width) or not _is_size(height):
                unmeasured.append(index)
            elif min(width, height) < self.min_side:
                small.append(index)
        self.stat_update("images_too_small", value=len(small))
        self.stat_update("images_unmeasured", value=len(unmeasured))
        if unmeasured and not self._warned:
            self._warned = True
            logger.warning("min_size: an image has no decoded size (original_width/original_height): it is removed; "
                           "run the images step before min_size")
        return remove_images_or_document(doc, sorted(small + unmeasured), "too_small" if small else "unmeasured")


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
