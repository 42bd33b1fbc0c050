"""Question + answer n-grams: catch an evaluation item whose text was copied into training data.

Text is compared as words, lower-cased, with punctuation, spacing and image placeholders dropped. An item is indexed
by the n-word windows (n = 8, or the whole item if shorter, down to 6 words) that end inside its answer, so a match
means the end of the question and the answer appear together, verbatim; a question template or common words alone do
not match. Captions (no question) are indexed by all their windows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

NGRAM_WORDS = 8
MIN_WORDS = 6  # shorter items ("What is it? A dog.") are too common to call a match; they are counted, not indexed
_NON_WORD = re.compile(r"[^\w]+")
_IMAGE_MARKER = re.compile(r"<image(?:\s*\d+)?>")  # MMMU's "<image 1>" placeholders, and plain "<image>" tokens


def words(text: str) -> list[str]:
    return _NON_WORD.sub(" ", _IMAGE_MARKER.sub(" ", text).lower()).split()


def window_hash(window: list[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(window).encode(), digest_size=8).digest(), "big")


def item_windows(question: str | None, answer: str) -> list[tuple[int, int]]:
    """(n, hash) of each window of the item that ends inside its answer; [] if the item is too short."""
    q, a = words(question or ""), words(answer)
    full = q + a
    if len(full) < MIN_WORDS or not a:
        return []
    n = min(NGRAM_WORDS, len(full))
    first_end = max(n, len(q) + 1)  # windows full[end - n:end] with end > len(q): they contain answer words
    return [(n, window_hash(full[end - n:end])) for end in range(first_end, len(full) + 1)]


def text_windows(text: str, sizes: set[int]) -> Iterator[tuple[int, int]]:
    """(n, hash) of every window of a training text, for each window size the index holds."""
    tokens = words(text)
    for n in sorted(sizes):
        for start in range(len(tokens) - n + 1):
            yield n, window_hash(tokens[start:start + n])
