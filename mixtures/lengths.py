"""The maximum sample length: a unit that fits is one sample; one that does not is dropped, or split into parts
that each fit, as the source's `too_long` says.

Splitting keeps every image with its text: the layout is cut only right after a text, so an image travels with
the text that follows it (and a run of images with the text after them). A block (images + their text) that is
still too long has its text cut at paragraph, then line, then sentence, then word boundaries, each piece keeping
its separator, so the pieces joined give the text back; the images stay with the first piece, which alone is
cut to the room they leave (the rest is cut at the full maximum), and pieces of one text that share a part are
one text. A piece that alone exceeds the budget (a single "word" of thousands of tokens) is dropped and counted,
as are trailing images that fit in no part with text (a part is never images alone). Token counts follow
`mixtures.tokens`: a sample's text tokens are the sum of its texts' counts, so parts are counted exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SEPARATORS = ("\n\n", "\n", ". ", " ")

Counter = Callable[[list[str]], list[int]]  # texts -> tokens of each (mixtures.tokens.text_tokens)


@dataclass
class Part:
    """One sample's worth of a unit: the layout (None = the next image), the image references, tokens per text."""

    texts: list[str | None]
    images: list[object]
    text_tokens: list[int]  # per text (not per position)
    continues: bool = False  # its first text is the rest of the text before it (a cut piece of one text)

    def cost(self, image_tokens: int) -> int:
        return sum(self.text_tokens) + len(self.images) * image_tokens


@dataclass
class Fitted:
    parts: list[Part]
    outcome: str  # "fits", "split", "too_long" (dropped), "no_room" (the images alone exceed the maximum)
    pieces_dropped: int = 0  # text pieces too long even at word level, left out of the parts


def _split_once(text: str, separator: str) -> list[str]:
    chunks = text.split(separator)
    return [c + separator for c in chunks[:-1]] + ([chunks[-1]] if chunks[-1] else [])


def split_text(text: str, budget: int, count: Counter, level: int = 0) -> tuple[list[tuple[str, int]], int]:
    """Pieces of `text` (with their token counts) of at most `budget` tokens each, adjacent ones joined while they
    fit; and how many pieces could not be made to fit (dropped)."""
    tokens = count([text])[0]
    if tokens <= budget:
        return [(text, tokens)], 0
    while level < len(SEPARATORS) and len(chunks := _split_once(text, SEPARATORS[level])) < 2:
        level += 1
    if level == len(SEPARATORS):
        return [], 1
    pieces, dropped = [], 0
    for chunk in chunks:
        found, lost = split_text(chunk, budget, count, level + 1)
        pieces += found
        dropped += lost
    return _join(pieces, budget, count), dropped


def _join(pieces: list[tuple[str, int]], budget: int, count: Counter) -> list[tuple[str, int]]:
    """Adjacent pieces merged while the merged text, counted exactly, fits."""
    out: list[tuple[str, int]] = []
    for text, tokens in pieces:
        if out and out[-1][1] + tokens <= budget * 2:  # cheap pre-check before counting the merge
            merged = out[-1][0] + text
            merged_tokens = count([merged])[0]
            if merged_tokens <= budget:
                out[-1] = (merged, merged_tokens)
                continue
        out.append((text, tokens))
    return out


def _blocks(texts: list[str | None], images: list[object], tokens: list[int]) -> list[Part]:
    """The layout cut right after each text: [images..., text] or [text], and trailing images alone."""
    blocks, current = [], Part([], [], [])
    image_iter, token_iter = iter(images), iter(tokens)
    for text in texts:
        if text is None:
            current.texts.append(None)
            current.images.append(next(image_iter))
            continue
        current.texts.append(text)
        current.text_tokens.append(next(token_iter))
        blocks.append(current)
        current = Part([], [], [])
    if current.texts:
        blocks.append(current)
    return blocks


def _shrink(block: Part, max_tokens: int, image_tokens: int, count: Counter) -> tuple[list[Part], int]:
    """A block over the maximum as blocks that fit: its text in pieces, the images with the first one. Only that
    first piece is cut to the room the images leave; the rest of the text is cut again at the full maximum, so
    the parts after it are filled as full as the others."""
    if block.cost(image_tokens) <= max_tokens:
        return [block], 0
    budget = max_tokens - len(block.images) * image_tokens
    text = block.texts[-1]
    if budget <= 0 or text is None:
        return [], 1
    head, dropped = split_text(text, budget, count)
    if not head:
        return [], dropped
    if text.startswith(head[0][0]):  # the usual case: the rest of the text is cut again at the full maximum
        rest = text[len(head[0][0]):]
        tail, dropped = split_text(rest, max_tokens, count) if rest else ([], 0)
    else:  # a piece dropped at the start or inside the first piece: the other pieces joined at the full maximum
        tail = _join(head[1:], max_tokens, count)
    first = Part(block.texts[:-1] + [head[0][0]], list(block.images), [head[0][1]])
    return [first] + [Part([p], [], [n], continues=True) for p, n in tail], dropped


def _append(last: Part, piece: Part, max_tokens: int, image_tokens: int, count: Counter) -> bool:
    """Add `piece` to the part `last` if the sum fits; a piece that continues the part's last text is joined to
    it as one text and counted again (the trainer puts a paragraph break between texts: none is invented)."""
    if last.cost(image_tokens) + piece.cost(image_tokens) > max_tokens:
        return False
    if piece.continues and last.texts and last.texts[-1] is not None:
        merged = last.texts[-1] + piece.texts[0]
        tokens = count([merged])[0]
        if sum(last.text_tokens[:-1]) + tokens + len(last.images) * image_tokens > max_tokens:
            return False
        last.texts[-1], last.text_tokens[-1] = merged, tokens
        last.texts += piece.texts[1:]
        last.text_tokens += piece.text_tokens[1:]
    else:
        last.texts += piece.texts
        last.text_tokens += piece.text_tokens
    last.images += piece.images
    return True


def fit(texts: list[str | None], images: list[object], tokens: list[int], max_tokens: int, image_tokens: int,
        too_long: str, count: Counter) -> Fitted:
    """The parts of one unit under `max_tokens` (`tokens`: per text of `texts`, in order)."""
    whole = Part(list(texts), list(images), list(tokens))
    if whole.cost(image_tokens) <= max_tokens:
        return Fitted([whole], "fits")
    if too_long != "split":
        return Fitted([], "too_long")
    if len(images) * image_tokens > max_tokens and max_tokens < image_tokens:
        return Fitted([], "no_room")
    parts: list[Part] = []
    dropped = 0
    for block in _blocks(texts, images, tokens):
        shrunk, lost = _shrink(block, max_tokens, image_tokens, count)
        dropped += lost
        for piece in shrunk:
            if parts and _append(parts[-1], piece, max_tokens, image_tokens, count):
                continue
            if piece.cost(image_tokens) <= max_tokens and piece.text_tokens:
                parts.append(Part(piece.texts, piece.images, piece.text_tokens))
            else:  # images with no text room, or trailing images that fit no part: never a sample without text
                dropped += 1
    return Fitted(parts, "split" if parts else "too_long", dropped)
