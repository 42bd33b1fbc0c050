"""The `language` step: fastText language identification on the shipped tiny model, in a plain datatrove pipeline
and as a declared pipeline step (manifest, removal records, one-line errors)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document

from filters.language import LanguageFilter, prepared_text
from tests.conftest import MODELS, SAMPLE_OBELICS

TINY_LID = f"{MODELS}/tiny-lid/model.bin"
HELDOUT = Path(MODELS) / "tiny-lid" / "heldout.txt"
ENGLISH = "The function returns the number of items in the container, or raises an error when it is closed."
FRENCH = "Le chat est sur la table avec les enfants, et nous sommes toujours dans la maison."
GERMAN = "Der Hund ist heute nicht im Haus, weil die Kinder mit ihm in der Stadt sind."


def judge(texts: list[str], **kwargs) -> list[tuple[Document, object]]:
    step = LanguageFilter(TINY_LID, **kwargs)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    return list(zip(docs, step.filter_batch(docs)))


# the model and the filter ----------------------------------------------------------------------------------------
def test_tiny_model_identifies_held_out_sentences_and_the_english_sample():
    lines = [line.split(" ", 1) for line in HELDOUT.read_text(encoding="utf-8").splitlines()]
    judged = judge([text for _, text in lines], min_score=None)
    right = Counter(label.removeprefix("__label__") for (label, _), (doc, _) in zip(lines, judged)
                    if doc.metadata["language"] == label.removeprefix("__label__"))
    total = Counter(label.removeprefix("__label__") for label, _ in lines)
    assert set(total) == {"en", "fr", "de", "es", "it"}
    assert all(right[lang] >= 0.95 * total[lang] for lang in total), (right, total)
    # the OBELICS sample (English prose the model never saw): every document with text is English
    texts = ["\n\n".join(t for t in row if t) for path in sorted(Path(SAMPLE_OBELICS).glob("*.parquet"))
             for row in pq.read_table(path, columns=["texts"]).column("texts").to_pylist()]
    languages = Counter(doc.metadata["language"] for doc, _ in judge([t for t in texts if t.strip()]))
    assert languages == {"en": sum(1 for t in texts if t.strip())}


def test_removal_reasons_and_annotations():
    texts = [ENGLISH, FRENCH, GERMAN, "", " \n\n \t\x00", "The cat sits on the table and looks at the birds."]
    results = judge(texts)
    assert [r for _, r in results] == [True, (False, "wrong_language"), (False, "wrong_language"),
                                       (False, "no_text"), (False, "no_text"), True]
    assert [d.metadata["language"] for d, _ in results] == ["en", "fr", "de", None, None, "en"]
    assert results[3][0].metadata["language_score"] is None
    assert all(0.8 <= d.metadata["language_score"] <= 1.0 for d, _ in results if d.metadata["language"])
    # several wanted languages
    assert [r for _, r in judge(texts[:3], languages=("en", "fr"))] == [True, True, (False, "wrong_language")]
    # the wanted language, below the cut
    score = results[0][0].metadata["language_score"]
    (doc, result), = judge([ENGLISH], min_score=min(1.0, score + 1e-6))
    assert result == (False, "low_language_score") and doc.metadata["language"] == "en"
    # a NaN probability (a broken model) is no pass
    assert LanguageFilter(TINY_LID)._judge(Document(text="x", id="n"), "en", float("nan")) == (
        False, "low_language_score")
    # annotation only: nothing removed, even without text
    assert [r for _, r in judge(texts, min_score=None)] == [True] * len(texts)


def test_scored_as_obelics_did_one_lowercased_line_and_probability_capped_at_one():
    import fasttext

    model = fasttext.load_model(TINY_LID)
    text = "The cat sits on the table and looks at the birds."
    raw = float(model.predict(prepared_text(text))[1][0])
    assert raw > 1.0  # fastText's softmax rounds above 1 for this one: the annotation must not
    (doc, _), = judge([text])
    assert doc.metadata["language_score"] == 1.0
    assert prepared_text("Line ONE\nline\u2028two\n") == "line one line\u2028two "
    # a hostile row: a lone surrogate would make fastText refuse the whole batch
    (doc, result), = judge([ENGLISH + " \ud800 \udfff"])
    assert result is True and doc.metadata["language"] == "en"
    mixed = judge([FRENCH, ENGLISH + "\r\n" + ENGLISH + "\x00", GERMAN])
    assert [d.metadata["language"] for d, _ in mixed] == ["fr", "en", "de"]


def test_filter_in_a_plain_datatrove_pipeline(tmp_path):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    rows = [{"text": ENGLISH, "id": "en"}, {"text": FRENCH, "id": "fr"}, {"text": " \n ", "id": "blank"},
            {"text": GERMAN + "\n\n" + GERMAN, "id": "de"}, {"text": ENGLISH + "\n" + ENGLISH, "id": "en2"}]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    removed = JsonlWriter(str(tmp_path / "removed"), output_filename="${rank}.jsonl", compression=None)
    pipeline = [JsonlReader(str(tmp_path / "in")),
                LanguageFilter(TINY_LID, batch_size=2, exclusion_writer=removed),
                JsonlWriter(str(tmp_path / "kept"), output_filename="${rank}.jsonl", compression=None)]
    LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(tmp_path / "logs")).run()
    kept = [json.loads(line) for line in (tmp_path / "kept" / "00000.jsonl").read_text().splitlines()]
    assert [(d["id"], d["metadata"]["language"]) for d in kept] == [("en", "en"), ("en2", "en")]
    dropped = [json.loads(line) for line in (tmp_path / "removed" / "00000.jsonl").read_text().splitlines()]
    assert [(d["id"], d["metadata"]["filter_reason"]) for d in dropped] == [
        ("fr", "wrong_language"), ("blank", "no_text"), ("de", "wrong_language")]
    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    language = next(s["stats"] for s in stats if "language" in s["name"])
    assert language["total"] == 5 and language["forwarded"] == 2 and language["dropped_wrong_language"] == 2


def test_model_from_a_hub_repository_through_the_cache(tmp_path, monkeypatch):
    """hf://OWNER/REPO[@REVISION]/FILE resolves with hf_hub_download; here from a filled cache, offline."""
    from huggingface_hub import constants

    from filters.language import model_file
    from pipelines.language_steps import LanguageOptions
    from pipelines.options import UsageError

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-lid"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(TINY_LID, repo / "snapshots" / commit / "lid.bin")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    for model in ("hf://someone/tiny-lid/lid.bin", f"hf://someone/tiny-lid@{commit}/lid.bin"):
        assert Path(model_file(model)).read_bytes() == Path(TINY_LID).read_bytes()
        assert LanguageOptions(model=model).model_file() == model_file(model)
    step = LanguageFilter("hf://someone/tiny-lid/lid.bin")
    docs = [Document(text=FRENCH, id="fr"), Document(text=ENGLISH, id="en")]
    assert step.filter_batch(docs) == [(False, "wrong_language"), True]
    with pytest.raises(UsageError, match=r"^--lang-model hf://someone/absent/lid.bin: cannot be downloaded"):
        LanguageOptions(model="hf://someone/absent/lid.bin").model_file()
    with pytest.raises(UsageError, match=r"^--lang-model hf://someone/lid.bin: a Hub model is hf://OWNER/REPO"):
        LanguageOptions(model="hf://someone/lid.bin").model_file()


# the step in a declared pipeline ---------------------------------------------------------------------------------
CAPTIONS = pa.schema([("id", pa.string()), ("caption", pa.string())])


def captions_spec():
    from pipelines.cli import PipelineSpec
    from pipelines.language_steps import LANGUAGE
    from pipelines.sources import ParquetSource, RowFormat

    def to_document(row: dict, doc_id: str) -> Document:
        return Document(text=row["caption"] or "", id=row["id"] or doc_id)

    return PipelineSpec(name="captions_test", description="test captions", default_input="", examples=("x",),
                        source=ParquetSource(RowFormat(CAPTIONS, to_document,
                                                       lambda doc: {"id": doc.id, "caption": doc.text})),
                        steps=(LANGUAGE,))


def write_captions(folder: Path) -> None:
    folder.mkdir()
    shards = [[("a", ENGLISH), ("b", FRENCH), ("c", None), ("d", GERMAN)],
              [("e", ENGLISH.upper()), ("f", "Nous sommes dans la ville aujourd'hui avec les enfants.")]]
    for n, rows in enumerate(shards):
        pq.write_table(pa.Table.from_pylist([{"id": i, "caption": c} for i, c in rows], schema=CAPTIONS),
                       folder / f"captions-{n}.parquet")


def test_language_step_in_a_declared_pipeline(tmp_path, capsys):
    from pipelines.cli import main

    write_captions(tmp_path / "in")
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--workers", "1", "--lang-model", TINY_LID]
    assert main(captions_spec(), args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"]["input"] == 6
    kept = [r for n in (0, 1) for r in pq.read_table(out / "data" / f"{n:05d}.parquet").to_pylist()]
    assert [r["id"] for r in kept] == ["a", "e"]
    removed = [r for n in (0, 1) if (out / "removed" / f"{n:05d}.parquet").exists()
               for r in pq.read_table(out / "removed" / f"{n:05d}.parquet").to_pylist()]
    assert {(r["id"], r["removed_step"], r["removed_reason"]) for r in removed} == {
        ("b", "language", "wrong_language"), ("c", "language", "no_text"), ("d", "language", "wrong_language"),
        ("f", "language", "wrong_language")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"] == {"--lang-model": TINY_LID, "--lang": "en", "--lang-min-score": 0.8}
    # the output holds one configuration
    assert main(captions_spec(), args + ["--lang", "en,fr"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --output {out} was made with --lang en; this run has en,fr: use another --output or the same flags")
    # French wanted too: a new output keeps the French captions
    again = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "fr"), "--workers", "1",
             "--lang-model", TINY_LID, "--lang", "en,fr"]
    assert main(captions_spec(), again) == 0
    kept = [r["id"] for n in (0, 1) for r in pq.read_table(tmp_path / "fr" / "data" / f"{n:05d}.parquet").to_pylist()]
    assert kept == ["a", "b", "e", "f"]


@pytest.mark.parametrize("flags, message", [
    (["--lang-model", "/nonexistent/lid.bin"], "--lang-model /nonexistent/lid.bin: no such file"),
    (["--lang-model", str(HELDOUT)], f"--lang-model {HELDOUT}: not a fastText model (.bin or .ftz)"),
    (["--lang-model", "hf://just-a-name"], "--lang-model hf://just-a-name: a Hub model is hf://OWNER/REPO"
                                           "[@REVISION]/FILE"),
    (["--lang-min-score", "1.5"], "--lang-min-score 1.5: must be between 0 and 1"),
    (["--lang", "en,"], "--lang en,: give language labels separated by commas, e.g. en or en,fr"),
])
def test_bad_flags_give_one_line(tmp_path, capsys, flags, message):
    from pipelines.cli import main

    write_captions(tmp_path / "in")
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--lang-model", TINY_LID, *flags]
    assert main(captions_spec(), args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {message}" and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_help_lists_the_step_options_with_obelics_defaults():
    from pipelines.cli import build_parser

    text = " ".join(build_parser(captions_spec()).format_help().split())
    assert "language identification (step language)" in text
    assert "--lang LABELS" in text and "(default: en)" in text
    assert "--lang-min-score" in text and "(default: 0.8)" in text
    assert "--lang-model MODEL" in text and "lid.176.bin" in text


def test_the_tiny_model_is_rebuilt_byte_for_byte(tmp_path):
    """scripts/make_tiny_lid_model.py: same fastText build, same seed, one thread: the shipped bytes."""
    from tests.conftest import run_command

    done = run_command("scripts.make_tiny_lid_model", "--output", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("model.bin", "heldout.txt"):
        assert (tmp_path / name).read_bytes() == (Path(MODELS) / "tiny-lid" / name).read_bytes(), name
    assert (tmp_path / "model.bin").stat().st_size < 2_000_000
