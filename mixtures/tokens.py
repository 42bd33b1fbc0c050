"""Token counts of a sample, as every reader of a mixture counts them (the mixtures' shared contract):
text tokens = the sum over its texts of `len(tokenizer(text, add_special_tokens=False).input_ids)`, image tokens =
images x the stage's `image_tokens`.

The tokenizer is loaded with `transformers.AutoTokenizer` once, by the command. A fast tokenizer's encoding is
done by its `tokenizers` backend (`PreTrainedTokenizerFast` hands the texts to `backend_tokenizer.encode_batch`),
so the tasks get that backend, serialised, and count with it directly: the same ids, without importing
transformers (and torch with it, about 5 s) in every worker process. A slow tokenizer is loaded by each worker.
"""

from __future__ import annotations

import hashlib

from filters.devices import load_once

# The Idefics2 tokenizer (Hub model card of HuggingFaceM4/idefics2-8b; its processor_config.json sets
# image_seq_len 64, the paper's 64 visual tokens an image)
DEFAULT_TOKENIZER = "HuggingFaceM4/idefics2-8b"


def load_tokenizer(name: str):
    """`transformers.AutoTokenizer` for a Hub id or a local folder, once per process."""
    def load(_device: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)

    return load_once(("mixture-tokenizer", name), load, device="cpu", uses_torch=False)


class TokenCounter:
    """`counter(texts)` -> tokens of each text (no special tokens). Picklable; loads what it needs once per process."""

    def __init__(self, name: str):
        tokenizer = load_tokenizer(name)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.name = name
        self.backend = backend.to_str() if backend is not None else None
        self.key = hashlib.sha256((self.backend or name).encode()).hexdigest()

    def _load(self):
        if self.backend is None:
            return load_tokenizer(self.name)

        def load(_device: str):
            from tokenizers import Tokenizer

            return Tokenizer.from_str(self.backend)

        return load_once(("mixture-token-backend", self.key), load, device="cpu", uses_torch=False)

    def __call__(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        tokenizer = self._load()
        if self.backend is None:
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
