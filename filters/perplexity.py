"""`perplexity`: score each document with a causal LM and remove the least natural text.

The Idefics2 paper (arXiv:2405.02246, section A.1.1) removes OBELICS's documents of highest perplexity.

The recipe: the document's texts joined by "\n\n", tokenized without special tokens; longer than 512 tokens, a
random contiguous 512-token window, seeded by the text itself so that every run, every sharding and every
task count picks the same one; perplexity = exp(mean cross-entropy over the window's predicted tokens). Default model
`tiiuae/falcon-rw-1b`, bf16 on GPU, fp32 on CPU, padding with the EOS token.
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from dataclasses import dataclass

from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.annotation_cache import ScoringFilter, ShardScoreCache
from filters.devices import load_once, model_dtype

PERPLEXITY_KEY = "perplexity"


@dataclass
class PerplexityConfig:
    model: str = "tiiuae/falcon-rw-1b"  # the Idefics2 team's scorer (paper, section A.1.1)
    window: int = 512  # tokens; longer documents are scored on a random window of this size
    # padded tokens per forward pass (documents are grouped by length); None: 2,048 on CPU, where larger
    # batches lose to cache misses (benchmarks/perplexity_bench.py), 32,768 on GPU
    batch_tokens: int | None = None
    device: str | None = None  # default: cuda if available, else cpu


def window_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def window_key(window: list[int]) -> str:
    """What a perplexity score is keyed by: the scored token ids themselves (the model's identity is the cache's
    folder)."""
    return hashlib.blake2b(array("q", window).tobytes(), digest_size=16).hexdigest()  # 8-byte ids everywhere


def token_window(ids: list[int], window: int, text: str) -> list[int]:
    """The whole document, or a random contiguous `window` of it, chosen by the document's text."""
    if len(ids) <= window:
        return ids
    start = random.Random(window_seed(text)).randrange(len(ids) - window + 1)
    return ids[start:start + window]


class PerplexityScorer:
    """A causal LM loaded once per task, lazily; scores batches of token windows grouped by length. Cutting
    windows needs only the tokenizer: a pass whose scores are all cached (the filter pass after calibration)
    never loads the model."""

    def __init__(self, config: PerplexityConfig | None = None):
        self.config = config or PerplexityConfig()
        self._model = self._tokenizer = None

    def __getstate__(self) -> dict:  # ship the config, not the weights, to workers
        return {"config": self.config, "_model": None, "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_once(("perplexity tokenizer", self.config.model), self._load_tokenizer, "cpu",
                                        uses_torch=False)
        return self._tokenizer

    def load(self) -> None:
        if self._model is None:
            tokenizer = self.tokenizer  # first: `load_once` holds its lock while it loads
            pad = tokenizer.pad_token_id
            self.pad_id = pad if pad is not None else tokenizer.eos_token_id  # Falcon has no pad token
            self._model, self.batch_tokens = load_once(
                ("perplexity", self.config.model, self.config.device, self.config.batch_tokens), self._load,
                self.config.device)

    def _load_tokenizer(self, device: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.config.model)

    def _load(self, device: str) -> tuple:
        """Model and batch size: loaded once per worker process (see `load_once`)."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.config.model, dtype=model_dtype(device)).to(device).eval()
        return model, self.config.batch_tokens or (32768 if device.startswith("cuda") else 2048)

    @property
    def model(self):
        self.load()
        return self._model

    def windows(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [token_window(ids, self.config.window, text) for ids, text in zip(encoded, texts)]

    def score_windows(self, windows: list[list[int]]) -> list[float]:
        """exp(mean token cross-entropy) per window; NaN for a window with fewer than 2 tokens (nothing to
        predict)."""
        import torch

        model = self.model  # loads the model (and batch_tokens) on first use
        scores = [math.nan] * len(windows)
        order = sorted((i for i, w in enumerate(windows) if len(w) >= 2), key=lambda i: -len(windows[i]))
        start = 0
        while start < len(order):
            longest = len(windows[order[start]])
            size = max(1, self.batch_tokens // longest)
            batch = order[start:start + size]
            start += size
            ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(windows[i])] = torch.tensor(windows[i])
                mask[row, :len(windows[i])] = 1
            # position t predicts token t+1; padding and the last position predict nothing (-100)
            targets = torch.full_like(ids, -100)
            targets[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            ids, mask, targets = ids.to(model.device), mask.to(model.device), targets.to(model.device)
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask).logits
                losses = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(),
                                                           targets.view(-1), reduction="none").view(targets.shape)
                predicted = (targets != -100).sum(1)
                mean = losses.sum(1) / predicted
            for row, i in enumerate(batch):
                scores[i] = math.exp(mean[row].item())
        return scores

    def score(self, texts: list[str]) -> list[float]:
        return self.score_windows(self.windows(texts))


class PerplexityFilter(ScoringFilter):
    """Annotate `metadata["perplexity"]`; with `max_perplexity`, remove documents above it.

    Rules: perplexity > `max_perplexity` -> `above_max_perplexity`; a document too short to score (under two
    tokens) -> `too_short`. Without `max_perplexity` it only annotates (the first pass of a calibrated cut).
    With `cache`, scores already on disk for the shard are reused, and new ones saved.
    """

    name = "perplexity"

    def __init__(self, scorer: PerplexityScorer, max_perplexity: float | None = None,
                 cache: ShardScoreCache | None = None, batch_size: int = 256,
                 exclusion_writer: DiskWriter | None = None):
        super().__init__(cache, batch_size, exclusion_writer)
        self.scorer, self.max_perplexity = scorer, max_perplexity

    @property
    def scoring_only(self) -> bool:
        return self.max_perplexity is None

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        windows = self.scorer.windows([d.text for d in batch])
        keys = [window_key(w) for w in windows]
        todo = {k: w for k, w in zip(keys, windows) if k not in self._scores}
        if todo:
            self.stat_update("tokens_scored", value=sum(map(len, todo.values())))
            self.add_scores(dict(zip(todo, self.scorer.score_windows(list(todo.values())))))
        return [self._judge(doc, key) for doc, key in zip(batch, keys)]

    def _judge(self, doc: Document, key: str) -> bool | tuple[bool, str]:
        perplexity = self._scores[key]
        doc.metadata[PERPLEXITY_KEY] = perplexity
        self.judged(perplexity)
        if math.isnan(perplexity):
            return (False, "too_short") if self.max_perplexity is not None else True
        self.stat_update(PERPLEXITY_KEY, value=perplexity)
        if self.max_perplexity is not None and perplexity > self.max_perplexity:
            return False, "above_max_perplexity"
        return True
