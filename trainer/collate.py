"""Examples -> model inputs in the Idefics2 prompt layout, with the labels the loss is computed from.

Each image becomes `<fake_token_around_image>` + n x `<image>` + `<fake_token_around_image>` (n = the resampler's
latents; with image splitting 5 such groups, adjacent separators merged), exactly as `Idefics2Processor` expands
an `<image>` placeholder (a test compares the two). A chat turn is
`User:{question}<end_of_utterance>\\nAssistant: {answer}<end_of_utterance>\\n` (the released Idefics2 chat
template). The prompt is tokenized in one piece with character offsets, so the labels follow the text exactly
whatever the tokenizer merges: in SFT only the answers and their `<end_of_utterance>` are learned.

Samples are padded, never packed: each row attends only to itself (attention mask), so no sample sees another,
and the cost is the padding that length grouping (`trainer.data`) keeps small.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from PIL import Image

from filters.image_decode import ImageRefused, open_checked, resized_rgb

IGNORE = -100  # labels the loss skips (torch.nn.functional.cross_entropy's ignore_index)


@dataclass
class Example:
    """One sample as read: interleaved (`texts` with None where an image goes) or a conversation (`turns`)."""

    origin: str  # file:row, for the logs
    images: list[bytes]
    texts: list[str | None] | None = None
    turns: list[tuple[str, str]] | None = None
    # From a pretraining mixture: (its source's `max_tokens`, the mixture's `image_tokens`), the limit the mixture
    # accepted the sample under; None for other data
    mixture_limit: tuple[int, int] | None = None

    def length_estimate(self, image_tokens: int) -> int:
        """Tokens, roughly (4 characters a token): what length grouping sorts by without tokenizing."""
        chars = sum(len(t) for t in self.texts or [] if t) + sum(len(u) + len(a) for u, a in self.turns or [])
        return chars // 4 + image_tokens * len(self.images)


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]
    images: list[Image.Image]


DEFAULT_MAX_LENGTH = 2048  # rendered tokens of a sample without a mixture limit (the mixture specs' usual max_tokens)


class Renderer:
    """Builds one example's prompt, token ids and labels; a sample that cannot be trained on raises `BadSample`.

    Length: a sample from a pretraining mixture is too long only when the mixture would have refused it (its texts'
    tokens without special tokens + `image_tokens` an image, over its source's `max_tokens`, `mixtures.tokens`'
    count): the template tokens the mixture does not count (BOS/EOS, image separators, "\n\n" between texts)
    never drop a sample it accepted. Other samples are limited to `DEFAULT_MAX_LENGTH` rendered tokens.
    `max_length`, when given, caps every rendered sample."""

    def __init__(self, processor, max_length: int | None, answers_only: bool):
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.max_length, self.answers_only = max_length, answers_only
        self.fake, self.image = processor.fake_image_token, processor.image_token
        self.end = str(processor.end_of_utterance_token)
        groups = 5 if processor.image_processor.do_image_splitting else 1
        self.image_string = (f"{self.fake}{self.image * processor.image_seq_len}" * groups) + self.fake
        self.image_tokens = processor.image_seq_len * groups
        self.image_id = processor.image_token_id
        self.fake_id = self.tokenizer.convert_tokens_to_ids(self.fake)
        self.reserved = {self.fake, self.image, self.end, *self.tokenizer.all_special_tokens}

    def _check_text(self, text: str) -> str:
        if any(token in text for token in self.reserved):
            raise BadSample("special_token_in_text")
        return text

    def pieces(self, example: Example) -> list[tuple[str, bool]]:
        """(text, learned) pieces of the prompt, in order."""
        if example.turns is not None:
            out = []
            for i, (user, answer) in enumerate(example.turns):
                out += [("User:", False), (self.images_string(len(example.images) if i == 0 else 0), False),
                        (self._check_text(user) + self.end + "\nAssistant:", False),
                        (" " + self._check_text(answer) + self.end, True), ("\n", False)]
            return [(text, learned or not self.answers_only) for text, learned in out if text]
        out, previous_text = [], False
        for text in example.texts:
            if text is None:
                out.append((self.image_string, False))
            else:
                out.append((("\n\n" if previous_text else "") + self._check_text(text), True))
            previous_text = text is not None
        return [(text, learned) for text, learned in out if text]

    def images_string(self, count: int) -> str:
        """`count` adjacent images: neighbours share one separator."""
        return self.image_string + self.image_string[len(self.fake):] * (count - 1) if count else ""

    def render(self, example: Example) -> Rendered:
        pieces = self.pieces(example)
        prompt, spans = "", []
        for text, learned in pieces:
            if prompt.endswith(self.fake) and text.startswith(self.fake):
                text = text[len(self.fake):]  # adjacent images share one separator, as Idefics2Processor does
            elif prompt.endswith(self.fake) and not (text[0].isspace() or text[0] == "<"):
                text = " " + text  # and a word glued to a closing separator gets a space, as it does
            if learned:
                spans.append((len(prompt), len(prompt) + len(text)))
            prompt += text
        encoded = self.tokenizer(prompt, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        labels = [token if any(a <= start < b for a, b in spans) and token not in (self.image_id, self.fake_id)
                  else IGNORE for token, (start, _) in zip(ids, encoded["offset_mapping"])]
        if example.turns is None and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)  # a document ends: learn to stop
            labels.append(self.tokenizer.eos_token_id)
        if ids.count(self.image_id) != self.image_tokens * len(example.images):
            raise BadSample("image_token_mismatch")
        if self.too_long(example, len(ids)):
            raise BadSample("too_long")
        if all(label == IGNORE for label in labels):
            raise BadSample("nothing_to_learn")
        size = self.processor.image_processor.size
        bounds = (size["shortest_edge"], size["longest_edge"])
        return Rendered(ids, labels, [open_image(data, *bounds) for data in example.images])


    def too_long(self, example: Example, rendered: int) -> bool:
        if self.max_length is not None and rendered > self.max_length:
            return True
        if example.mixture_limit is None or example.texts is None:
            return rendered > DEFAULT_MAX_LENGTH
        max_tokens, image_tokens = example.mixture_limit
        texts = [t for t in example.texts if t]
        counted = sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
        return counted + image_tokens * len(example.images) > max_tokens


class BadSample(Exception):
    """A sample skipped and counted under `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def fit_size(width: int, height: int, shortest: int, longest: int) -> tuple[int, int]:
    """The size within the bounds with the aspect ratio kept (longest side wins when both cannot hold).
    Idefics2's image processor raises each short side on its own, which stretches small or long images."""
    scale = 1.0
    if min(width, height) < shortest:
        scale = shortest / min(width, height)
    if max(width, height) * scale > longest:
        scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def open_image(data: bytes, shortest: int, longest: int) -> Image.Image:
    """RGB pixels of `data` fitted to the bounds, decoded to the end; refuses decompression bombs."""
    try:
        image = open_checked(data)
        return resized_rgb(image, fit_size(*image.size, shortest, longest))
    except ImageRefused as refused:
        raise BadSample("image_too_large" if refused.reason == "too_many_pixels" else "bad_image") from None
    except Exception:  # Pillow raises many types on hostile bytes (OSError, ValueError, SyntaxError, ...)
        raise BadSample("bad_image") from None


@dataclass
class Batch:
    """Model inputs plus what the loop logs. `tensors` is empty when every sample of the batch was bad."""

    index: int
    position: dict
    tensors: dict = field(default_factory=dict)
    tokens: int = 0  # real tokens (image tokens included)
    padded: int = 0  # positions in the padded batch
    images: int = 0
    pixels: int = 0  # real (not padding) pixels of the images, for the FLOP count
    skipped: Counter = field(default_factory=Counter)

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread (on GPU), so that the copy to the device can overlap."""
        self.tensors = {name: tensor.pin_memory() for name, tensor in self.tensors.items()}
        return self


def collate(renderer: Renderer, examples: list[Example], index: int, position: dict) -> Batch:
    """Render, drop and count bad samples, pad right; images of the batch padded by the image processor (samples
    without images get all-zero images, which the model drops before its vision tower)."""
    batch, rendered = Batch(index, position), []
    for example in examples:
        try:
            rendered.append(renderer.render(example))
        except BadSample as bad:
            batch.skipped[bad.reason] += 1
    if not rendered:
        return batch
    length, pad = max(len(r.input_ids) for r in rendered), renderer.tokenizer.pad_token_id
    ids = torch.full((len(rendered), length), pad, dtype=torch.long)
    labels = torch.full((len(rendered), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rendered), length), dtype=torch.long)
    for row, sample in enumerate(rendered):
        ids[row, :len(sample.input_ids)] = torch.tensor(sample.input_ids)
        labels[row, :len(sample.labels)] = torch.tensor(sample.labels)
        mask[row, :len(sample.input_ids)] = 1
    batch.tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    batch.tokens, batch.padded = int(mask.sum()), mask.numel()
    with_images = [row for row, sample in enumerate(rendered) if sample.images]
    if with_images:
        pixels = renderer.processor.image_processor([rendered[row].images for row in with_images],
                                                    return_tensors="pt")
        values, pixel_mask = pixels["pixel_values"], pixels["pixel_attention_mask"]
        full = torch.zeros((len(rendered), *values.shape[1:]), dtype=values.dtype)
        full_mask = torch.zeros((len(rendered), *pixel_mask.shape[1:]), dtype=pixel_mask.dtype)
        full[with_images], full_mask[with_images] = values, pixel_mask
        batch.tensors.update(pixel_values=full, pixel_attention_mask=full_mask)
        batch.images = sum(len(rendered[row].images) for row in with_images)
        batch.pixels = int(pixel_mask.sum())
    return batch
