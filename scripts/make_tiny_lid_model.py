"""Build the tiny fastText language identifier that ships in `pipelines/sample_data/models/tiny-lid/`, offline, in
seconds: a real supervised fastText model (the format of fastText's lid.176.bin, labels `__label__en` ...) that tells
five languages apart, for the `language` step's demo and tests.

    python scripts/make_tiny_lid_model.py [--output FOLDER]

- English: sentences of the Python reference manual every CPython carries (`pydoc_data.topics`), minus every
  sentence of the shipped OBELICS sample (built from the same manual), so the sample is held-out English.
- French, German, Spanish, Italian: short sentences drawn from the small word lists below; a fifth of each list is
  kept out of training and used only by the held-out sentences.
- Training text is prepared as the step prepares a document (lowercased, one line): `filters.language.prepared_text`.

Writes `model.bin` (quantized, well under 2 MB) and `heldout.txt` (held-out sentences in fastText's label format).
Same fastText build (fasttext-community 0.11.9, one thread, fixed seed): same bytes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import random
import re
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from filters.language import prepared_text  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "pipelines" / "sample_data" / "models" / "tiny-lid"
SAMPLE_OBELICS = REPO / "pipelines" / "sample_data" / "obelics"
SEED = 1234
SENTENCES_PER_LANGUAGE = 600
HELDOUT_PER_LANGUAGE = 100
# small, dim 16, character 2- to 4-grams hashed into 20k buckets, then quantized: under 2 MB
TRAINING = dict(dim=16, minn=2, maxn=4, bucket=20000, wordNgrams=1, epoch=25, lr=0.5, loss="softmax", minCount=1,
                thread=1, seed=SEED, verbose=0)
WORDS = {
    "fr": "le la les un une des du de et est sont dans sur avec pour par pas que qui nous vous ils elles il elle "
          "ce cette ces mais aussi très plus tout tous leur leurs notre votre être avoir fait faire peut doit "
          "maison ville pays temps jour nuit année monde enfant homme femme travail école livre eau pain "
          "rouge petit grand nouveau beau toujours jamais encore déjà aujourd'hui demain hier ici là où "
          "quand comment pourquoi parce chose chez entre sans sous après avant depuis pendant",
    "de": "der die das ein eine einen und ist sind nicht mit auf für von zu im dem den des sich auch "
          "wir ihr sie er es ich aber oder wenn weil dass noch schon sehr mehr alle kein keine haben sein "
          "wird werden kann muss haus stadt land zeit tag nacht jahr welt kind mann frau arbeit schule buch "
          "wasser brot rot klein groß neu schön immer nie heute morgen gestern hier dort wo wann wie warum "
          "ding zwischen ohne unter nach vor seit während über durch gegen",
    "es": "el la los las un una unos de del y es son en con para por no que quien nosotros vosotros ellos "
          "ellas él ella este esta estos pero también muy más todo todos su sus nuestro vuestro ser estar "
          "hace hacer puede debe casa ciudad país tiempo día noche año mundo niño hombre mujer trabajo "
          "escuela libro agua pan rojo pequeño grande nuevo bonito siempre nunca todavía ya hoy mañana ayer "
          "aquí allí donde cuando cómo porque cosa entre sin bajo después antes desde durante sobre hasta",
    "it": "il lo la i gli le un una di del della e è sono in con per non che chi noi voi loro lui lei "
          "questo questa questi ma anche molto più tutto tutti suo suoi nostro vostro essere avere fa fare "
          "può deve casa città paese tempo giorno notte anno mondo bambino uomo donna lavoro scuola libro "
          "acqua pane rosso piccolo grande nuovo bello sempre mai ancora già oggi domani ieri qui lì dove "
          "quando come perché cosa tra senza sotto dopo prima da durante sopra fino",
}


def check_fasttext_build() -> None:
    """Refuse to train with another fastText build: the bytes (and numpy 2 training, on other builds) differ."""
    import fasttext

    try:
        record = importlib.metadata.distribution("fasttext-community").read_text("RECORD") or ""
    except importlib.metadata.PackageNotFoundError:
        sys.exit("error: fasttext-community is not installed (pip install fasttext-community==0.11.9)")
    expected = next((line.split(",")[1] for line in record.splitlines()
                     if line.startswith("fasttext/FastText.py,")), "")
    actual = Path(fasttext.__file__).with_name("FastText.py").read_bytes()
    digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(actual).digest()).rstrip(b"=").decode()
    if digest != expected:
        sys.exit("error: the `fasttext` module is not fasttext-community's (another build installed over it): "
                 "pip install --force-reinstall --no-deps fasttext-community==0.11.9")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s.strip()]


def sample_sentences() -> set[str]:
    """Every sentence of the shipped OBELICS sample: kept out of training."""
    seen = set()
    for path in sorted(SAMPLE_OBELICS.glob("*.parquet")):
        for texts in pq.read_table(path, columns=["texts"]).column("texts").to_pylist():
            for text in texts or []:
                seen.update(sentences(text or ""))
    return seen


def english_sentences() -> list[str]:
    """Prose sentences of the Python reference manual, 6 to 40 words, mostly letters, none from the sample."""
    from pydoc_data.topics import topics

    excluded, found = sample_sentences(), []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            if block.startswith((" ", "\t")) or "::=" in block:
                continue
            for sentence in sentences(block):
                letters = sum(c.isalpha() or c == " " for c in sentence)
                if 6 <= len(sentence.split()) <= 40 and letters / len(sentence) > 0.9 and sentence not in excluded:
                    found.append(sentence)
    return sorted(set(found))


def word_sentences(words: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` sentences of 5 to 14 words drawn from `words`, the first words (function words) more often."""
    weights = [1.0 / (rank + 8) for rank in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(5, 14))).capitalize() + "."
            for _ in range(count)]


def corpus(rng: random.Random) -> tuple[list[str], list[str]]:
    """Training lines and held-out lines, as `__label__xx text`."""
    english = english_sentences()
    rng.shuffle(english)
    train = [("en", s) for s in english[HELDOUT_PER_LANGUAGE:HELDOUT_PER_LANGUAGE + SENTENCES_PER_LANGUAGE]]
    heldout = [("en", s) for s in english[:HELDOUT_PER_LANGUAGE]]
    for language, text in WORDS.items():
        words = text.split()
        held_out_words = set(rng.sample(words, len(words) // 5))
        kept = [w for w in words if w not in held_out_words]  # in the list's order (most frequent first)
        train += [(language, s) for s in word_sentences(kept, SENTENCES_PER_LANGUAGE, rng)]
        heldout += [(language, s) for s in word_sentences(words, HELDOUT_PER_LANGUAGE, rng)]
    rng.shuffle(train)
    line = lambda pair: f"__label__{pair[0]} {prepared_text(pair[1])}"  # noqa: E731
    return [line(p) for p in train], [line(p) for p in heldout]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUT, help=f"folder to write (default: {OUT})")
    out = parser.parse_args(argv).output
    check_fasttext_build()
    import fasttext

    train, heldout = corpus(random.Random(SEED))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "train.txt"
        data.write_text("\n".join(train) + "\n", encoding="utf-8")
        model = fasttext.train_supervised(str(data), **TRAINING)
        model.quantize(input=str(data), qnorm=True, retrain=False, dsub=2, thread=1, verbose=0)
        model.save_model(str(out / "model.bin"))
    (out / "heldout.txt").write_text("\n".join(heldout) + "\n", encoding="utf-8")
    correct = sum(model.predict(line.split(" ", 1)[1])[0][0] == line.split(" ", 1)[0] for line in heldout)
    size = (out / "model.bin").stat().st_size
    print(f"wrote {out}/model.bin ({size} bytes, {len(train)} training sentences); held-out accuracy "
          f"{correct}/{len(heldout)}")


if __name__ == "__main__":
    main()
