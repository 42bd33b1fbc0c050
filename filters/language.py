"""`language`: keep the documents written in the wanted language, as fastText's language identifier judges them.

The rule OBELICS was built with (arXiv:2306.16527; github.com/huggingface/OBELICS,
`obelics/processors/web_document_filtering.py`, `WebDocumentFilteringDocLevel`): the document's whole text (its
texts joined by "\n\n"), lowercased, newlines replaced by spaces (fastText predicts one line), scored by fastText's
`lid.176.bin`; the document stays when the top label is `en` with a probability of at least 0.8
(`lang_id_doc_level_min_cutoff` in its `config_filter_web_documents.yaml`).

fastText is imported, and the model loaded, inside the worker that first needs it, once per process.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.batched import BatchedFilter
from filters.devices import load_once
from filters.errors import UsageError

LANGUAGE_KEY, SCORE_KEY = "language", "language_score"
HUB_PREFIX = "hf://"
# lid.176.bin as published on fasttext.cc (dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin, the file
# OBELICS's filter_web_documents.py names), mirrored on the Hub by julien-c/fasttext-language-id ("Initial import
# from https://fasttext.cc/docs/en/language-identification.html"), pinned to its main commit. Not
# facebook/fasttext-language-identification: that model.bin is NLLB's lid218e, whose labels are `eng_Latn`-style.
LID176 = "hf://julien-c/fasttext-language-id@9f2e94d2fd6b2615d26f5ec5b34cf7e2f38cb86e/lid.176.bin"
# fastText's model header: int32 magic 793712314, then an int32 version of at most 12 (facebookresearch/fastText,
# src/fasttext.cc, FastText::checkModel)
FASTTEXT_MAGIC, FASTTEXT_MAX_VERSION = 793712314, 12


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None = None


def parse_model(model: str) -> str | HubFile:
    """A local path, or `hf://OWNER/REPO[@REVISION]/FILE` for a file of a Hub model repository."""
    if not model.startswith(HUB_PREFIX):
        return model
    parts = model[len(HUB_PREFIX):].split("/")
    if len(parts) < 3 or not all(parts):
        raise UsageError(f"{model}: a Hub model is hf://OWNER/REPO[@REVISION]/FILE")
    name, _, revision = parts[1].partition("@")
    return HubFile(f"{parts[0]}/{name}", "/".join(parts[2:]), revision or None)


def model_file(model: str) -> str:
    """The local file of `model`: the path itself, or the Hub file downloaded once into the Hugging Face cache."""
    where = parse_model(model)
    if isinstance(where, str):
        return where
    from huggingface_hub import hf_hub_download

    return hf_hub_download(where.repo_id, where.filename, revision=where.revision)


def check_model_file(path: str) -> None:
    """Fail with one line, before any task starts, when `path` is not a fastText model file."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    with open(path, "rb") as f:
        header = f.read(8)
    magic, version = struct.unpack("<ii", header) if len(header) == 8 else (0, 0)
    if magic != FASTTEXT_MAGIC or not 0 < version <= FASTTEXT_MAX_VERSION:
        raise UsageError(f"{path}: not a fastText model (.bin or .ftz)")


def _load(path: str):
    import fasttext

    return fasttext.load_model(path)


def prepared_text(text: str) -> str:
    """What fastText scores: OBELICS's lowercased one-line text, as valid UTF-8 (a lone surrogate from a hostile
    row would make fastText's binding refuse the whole batch); NUL, which fastText reads as a space, as a space."""
    text = text.lower().replace("\n", " ").replace("\0", " ")
    return text.encode("utf-8", "replace").decode("utf-8")


class LanguageFilter(BatchedFilter):
    """Annotate `metadata["language"]` (fastText's top label, without `__label__`) and `metadata["language_score"]`
    (its probability, capped at 1.0: fastText's softmax can round just above it), then remove:

    - `no_text`: nothing but whitespace to judge (fastText would still answer, from its end-of-line token alone);
      both annotations are None;
    - `wrong_language`: the top label is not one of `languages`;
    - `low_language_score`: the top label is wanted, its probability below `min_score`.

    With `min_score=None` it only annotates.
    """

    name = "language"
    _requires_dependencies = [("fasttext", "fasttext-community")]

    def __init__(self, model: str = LID176, languages: tuple[str, ...] = ("en",), min_score: float | None = 0.8,
                 exclusion_writer: DiskWriter | None = None, batch_size: int = 256):
        super().__init__(exclusion_writer, batch_size)
        self.model, self.languages, self.min_score = model, frozenset(languages), min_score
        self._fasttext = None

    def __getstate__(self) -> dict:  # ship the model's name, not the loaded model, to workers
        return {**self.__dict__, "_fasttext": None}

    @property
    def fasttext(self):
        if self._fasttext is None:
            path = model_file(self.model)
            self._fasttext = load_once(("fasttext", os.path.realpath(path)), lambda device: _load(path), "cpu",
                                       uses_torch=False)
        return self._fasttext

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        texts = [prepared_text(doc.text or "") for doc in batch]
        scored = [i for i, text in enumerate(texts) if text.strip()]
        predictions = [(None, None)] * len(batch)
        if scored:
            labels, probabilities = self.fasttext.predict([texts[i] for i in scored], k=1)
            for i, label, probability in zip(scored, labels, probabilities):
                predictions[i] = (label[0].removeprefix("__label__"), min(float(probability[0]), 1.0))
        return [self._judge(doc, *prediction) for doc, prediction in zip(batch, predictions)]

    def _judge(self, doc: Document, language: str | None, score: float | None) -> bool | tuple[bool, str]:
        doc.metadata[LANGUAGE_KEY], doc.metadata[SCORE_KEY] = language, score
        if language is None:
            return (False, "no_text") if self.min_score is not None else True
        self.stat_update(f"language_{language}")
        if self.min_score is None:
            return True
        if language not in self.languages:
            return False, "wrong_language"
        if not score >= self.min_score:  # NaN from a broken model is not a pass
            return False, "low_language_score"
        return True
