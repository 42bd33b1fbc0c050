"""A mixture's output tar, written under a temporary name and renamed into place when the shard is complete
(`pipelines.shards.TempFile`), with fixed member metadata so that the same samples give the same bytes."""

from __future__ import annotations

import tarfile

from datatrove.io import DataFolder

from mixtures.layout import Sample, add_sample
from pipelines.shards import TempFile


class SampleTar(TempFile):
    """`data/NNNNN.tar` of one output shard; `write(sample)` returns the bytes its members hold."""

    def __init__(self, folder: DataFolder, filename: str):
        super().__init__(folder, filename)
        self.tar = tarfile.open(fileobj=self.file, mode="w|")
        self.samples = self.bytes = 0

    def write(self, sample: Sample) -> int:
        written = add_sample(self.tar, sample)
        self.samples += 1
        self.bytes += written
        return written

    def _close(self) -> None:
        self.tar.close()
        super()._close()
