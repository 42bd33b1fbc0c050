"""One hostile row never fails its shard: it is removed with a reason, counted, and traceable to its file and row."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.demo import sample_path
from pipelines.obelics_format import OBELICS_SCHEMA
from tests.conftest import run_command


def row(url: object = "https://site.example/doc", image: str = "https://img.example/a.jpg",
        metadata: str | None = None, general: str | None = None) -> dict:
    return {"images": [None, image], "texts": ["A paragraph about a photograph of a harbour.", None],
            "metadata": metadata if metadata is not None else json.dumps([None, {"src": image}]),
            "general_metadata": general if general is not None else json.dumps({"url": url})}


def invalid_utf8_texts(table: pa.Table, row_index: int) -> pa.Table:
    """`table` with the first text of one row replaced by bytes that are not UTF-8 (written without validation)."""
    texts = table.column("texts").to_pylist()
    values = [t.encode() if t is not None else None for r in texts for t in r]
    offsets = [0]
    for r in texts:
        offsets.append(offsets[-1] + len(r))
    flat = [v for v in values]
    flat[offsets[row_index]] = b"caf\xe9 \xff\xfe"
    binary = pa.array(flat, type=pa.binary()).view(pa.string())
    column = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), binary)
    return table.set_column(table.schema.get_field_index("texts"), "texts", column)


def test_hostile_rows_are_removed_with_a_reason_and_the_shard_finishes(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    rows = [
        row(),  # a good one
        row(metadata=deep),
        row(general='{"url": ' + deep + "}"),
        row(url=["https://a.example", "https://b.example"]),
        row(url={"href": "https://a.example"}),
        row(url=42),
        row(image="https://img.example/a.jpg\nhttps://smuggled.example/b.jpg"),
        row(),  # its text becomes invalid UTF-8 below
    ]
    table = invalid_utf8_texts(pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA), 7)
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "hostile.parquet")
    out = tmp_path / "out"
    result = run_command("pipelines.obelics", "--input", str(tmp_path / "in"), "--output", str(out),
                         "--steps", "structure,optout", "--optout-list", sample_path("optout.txt"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())["total"]
    assert summary["input"] == 8 and summary["kept"] == 1
    assert summary["removed"] == {
        "read/unreadable_row": 1, "structure/bad_document_url": 3, "structure/bad_general_metadata_json": 1,
        "structure/bad_image_url": 1, "structure/bad_metadata_json": 1}
    removed = pq.read_table(out / "removed" / "00000.parquet").to_pylist()
    assert sorted(r["source_row"] for r in removed) == [1, 2, 3, 4, 5, 6, 7]
    assert {r["source_file"] for r in removed} == {"hostile.parquet"}
    unreadable = next(r for r in removed if r["removed_step"] == "read")
    assert unreadable["source_row"] == 7


def test_invalid_utf8_in_a_binary_column_removes_its_row_not_the_shard(tmp_path):
    """A column stored as binary casts to text in the footer check; its bad value must fail one row, not the shard
    on every retry."""
    rows = [row(), row(), row()]
    table = pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA)
    metadata = [m.encode() for m in table.column("metadata").to_pylist()]
    metadata[1] = b"\xff\xfe not utf-8"
    table = table.set_column(1, pa.field("metadata", pa.binary()), pa.array(metadata, type=pa.binary()))
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "binary.parquet")
    result = run_command("pipelines.obelics", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                         "--steps", "structure")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["total"]
    assert summary["kept"] == 2 and summary["removed"] == {"read/unreadable_row": 1}
