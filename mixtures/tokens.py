"""Token counts of a sample, as every reader of a mixture counts them (the mixtures' shared contract):
text tokens = the sum over its texts of `len(tokenizer(text, add_special_tokens=False).input_ids)`, image tokens =
images x the stage's `image_tokens`. The tokenizer is loaded once per worker process (`filters.devices.load_once`),
and transformers is imported only when it is.
"""

from __future__ import annotations

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


def text_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text (no special tokens), in one batched call."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def sample_tokens(tokenizer, texts: list[str | None], images: int, image_tokens: int) -> dict:
    """The `tokens` record of a sample: {"text", "image", "total"}."""
    text = sum(text_tokens(tokenizer, [t for t in texts if t is not None]))
    return {"text": text, "image": images * image_tokens, "total": text + images * image_tokens}
