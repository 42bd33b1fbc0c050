"""The mixture sample layout's reader: every sample back as written, hostile members contained, truncation loud."""

import io
import tarfile

import pytest

from mixtures.layout import BadSample, Sample, add_sample, iter_samples


def _tar(samples) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for sample in samples:
            add_sample(tar, sample)
    return buffer.getvalue()


SAMPLES = [Sample(f"k{i}", "pairs", [None, f"caption {i}"], [bytes([i]) * 100], {"id": str(i)}, [[10, 10]],
                  {"text": 2, "image": 64, "total": 66}) for i in range(5)]


def test_samples_round_trip():
    assert list(iter_samples(io.BytesIO(_tar(SAMPLES)))) == SAMPLES


def test_a_tar_cut_at_a_member_boundary_is_an_error_not_a_short_shard():
    """tarfile's stream mode takes a file that stops between members for a clean end: the samples after the cut
    would vanish without a word."""
    data = _tar(SAMPLES)
    offsets = [m.offset for m in tarfile.open(fileobj=io.BytesIO(data))]
    for cut in [*offsets[2::2], offsets[-1] + 1024]:  # after whole samples, and after the last one's data
        read = []
        with pytest.raises(tarfile.ReadError, match="truncated"):
            for sample in iter_samples(io.BytesIO(data[:cut])):
                read.append(sample)
        assert read == SAMPLES[:len(read)] and len(read) == (offsets.index(cut) // 2 if cut in offsets else 5)


def test_hostile_members_spoil_only_their_sample():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add_sample(tar, SAMPLES[0])
        for name, kind in (("../evil.json", tarfile.REGTYPE), ("k9.json", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, 0 if kind == tarfile.SYMTYPE else 2
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b"{}") if kind == tarfile.REGTYPE else None)
        add_sample(tar, SAMPLES[1])
    read = list(iter_samples(io.BytesIO(buffer.getvalue())))
    assert read[0] == SAMPLES[0] and read[-1] == SAMPLES[1]
    assert [r.reason for r in read[1:-1]] == ["unsafe_member", "unsafe_member"]
    assert all(isinstance(r, BadSample) for r in read[1:-1])


def test_a_json_member_that_is_not_an_object_spoils_only_its_sample():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add_sample(tar, SAMPLES[0])
        for i, value in enumerate((b"[1, 2]", b'"text"', b"null")):
            info = tarfile.TarInfo(f"odd{i}.json")
            info.size = len(value)
            tar.addfile(info, io.BytesIO(value))
        add_sample(tar, SAMPLES[1])
    read = list(iter_samples(io.BytesIO(buffer.getvalue())))
    assert read[0] == SAMPLES[0] and read[-1] == SAMPLES[1]
    assert [r.reason for r in read[1:-1]] == ["bad_json"] * 3


def test_a_failed_rewrite_of_mixture_json_keeps_the_old_file(tmp_path):
    """Run records are written to a temporary name and renamed: a write that dies half way (here a value JSON
    cannot encode, after the first keys are out) leaves the previous mixture.json whole, not a torn file that the
    next resume or `validate` would refuse."""
    from datatrove.io import get_datafolder

    from mixtures.layout import MIXTURE_FILE, MixtureInfo, SourceTarget, read_info, write_info

    folder = get_datafolder(str(tmp_path))
    info = dict(kind="sft", name="sft", share_of="answer_tokens", sources={"a": SourceTarget(share=1.0)},
                files="data/*.parquet")
    write_info(folder, good := MixtureInfo(**info))
    with pytest.raises(TypeError):
        write_info(folder, MixtureInfo(**info, extra={"z": {1, 2}}))
    assert read_info(folder) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [MIXTURE_FILE]
