"""OBELICS row -> Document -> OBELICS row is lossless, in memory and through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.obelics_format import document_to_row, row_to_document
from tests.conftest import SAMPLE_OBELICS, run_command

INPUT_FILES = sorted(Path(SAMPLE_OBELICS).glob("*.parquet"))


def is_well_formed(row: dict) -> bool:
    """The layout rules, restated independently of the code under test."""
    images, texts = row["images"], row["texts"]
    try:
        metadata = json.loads(row["metadata"])
    except ValueError:
        return False
    return (len(images) == len(texts) == len(metadata)
            and all((i is None) != (t is None) for i, t in zip(images, texts))
            and any(t is not None for t in texts) and any(i is not None for i in images))


def has_consecutive_texts(row: dict) -> bool:
    return any(a is not None and b is not None for a, b in zip(row["texts"], row["texts"][1:]))


def test_every_sample_row_round_trips_in_memory():
    for path in INPUT_FILES:
        for n, row in enumerate(pq.read_table(path).to_pylist()):
            assert document_to_row(row_to_document(row, f"d{n}")) == row


def test_changed_metadata_is_serialized_not_copied():
    row = pq.read_table(INPUT_FILES[0]).to_pylist()[0]
    doc = row_to_document(row, "d")
    doc.media[0].metadata["original_width"] = 123
    out = document_to_row(doc)
    assert json.loads(out["metadata"])[row["images"].index(doc.media[0].url)]["original_width"] == 123


def test_pipeline_writes_unchanged_documents_byte_for_byte(tmp_path):
    result = run_command("pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", str(tmp_path),
                         "--steps", "structure")
    assert result.returncode == 0, result.stderr[-2000:]
    for shard, path in enumerate(INPUT_FILES):
        rows = pq.read_table(path).to_pylist()
        data_path = tmp_path / "data" / f"{shard:05d}.parquet"
        assert pq.read_schema(data_path) == pq.read_schema(path)
        kept = pq.read_table(data_path).to_pylist()
        removed = pq.read_table(tmp_path / "removed" / f"{shard:05d}.parquet").to_pylist()
        good = [r for r in rows if is_well_formed(r)]
        assert len(kept) == len(good) and len(removed) == len(rows) - len(good)
        for original, written in zip(good, kept):
            if has_consecutive_texts(original):
                assert "\n\n".join(t for t in original["texts"] if t) == "\n\n".join(t for t in written["texts"] if t)
                assert not has_consecutive_texts(written)
            else:
                assert written == original  # all four columns, strings compared exactly
        bad = [r for r in rows if not is_well_formed(r)]
        assert [{k: r[k] for k in bad[0]} for r in removed] == bad  # removal records keep the row as it was
        assert all(r["removed_step"] == "structure" and r["removed_reason"] for r in removed)


def test_null_metadata_round_trips_as_null():
    row = {"images": ["https://x.example/a.jpg", None], "texts": [None, "Some text."], "metadata": "[null, null]",
           "general_metadata": None}
    assert document_to_row(row_to_document(row, "d")) == row
    row["metadata"] = None
    assert document_to_row(row_to_document(row, "d")) == row
