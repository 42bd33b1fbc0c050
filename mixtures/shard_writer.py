"""A mixture's output tar, written under a temporary name and renamed into place when the shard is complete
(`filters.shard_files.TempFile`), with fixed member metadata so that the same samples give the same bytes.

Each member is written as its header block (`tarfile.TarInfo.tobuf`, the standard library's own encoding) and
its bytes, padded to the 512-byte block, with no copy of the bytes: the same bytes `tarfile.TarFile.addfile` writes for
the same members (`mixtures.layout.add_sample`), without its copy through 16 KiB chunks (see
`benchmarks/mixture_bench.py` for the difference).
"""

from __future__ import annotations

import tarfile

from datatrove.io import DataFolder

from mixtures.layout import Sample
from filters.shard_files import TempFile

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads the archive to a whole record
_ZEROS = bytes(BLOCK)


def member_header(name: str, size: int) -> bytes:
    """The header `add_sample` writes for a member: regular file, mode 644, no time or owner."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info.tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape")


class SampleTar(TempFile):
    """`data/NNNNN.tar` of one output shard; `write(sample)` returns the bytes its members hold."""

    def __init__(self, folder: DataFolder, filename: str):
        super().__init__(folder, filename)
        self.samples = self.bytes = self.offset = 0

    def write(self, sample: Sample) -> int:
        written = 0
        for name, data in sample.members():
            header = member_header(name, len(data))
            padding = -len(data) % BLOCK
            self.file.write(header)
            self.file.write(data)
            if padding:
                self.file.write(_ZEROS[:padding])
            self.offset += len(header) + len(data) + padding
            written += len(data)
        self.samples += 1
        self.bytes += written
        return written

    def _close(self) -> None:
        end = 2 * BLOCK  # two zero blocks end the archive, then zeros to a whole record, as tarfile does
        end += -(self.offset + end) % RECORD
        self.file.write(bytes(end))
        super()._close()
