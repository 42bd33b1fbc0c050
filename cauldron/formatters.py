"""One formatter per task family: a source row in its authors' schema -> images and user/assistant turns.

A formatter reads the row through the entry's `fields` (role -> column), so a new dataset of a known kind is a
registry entry, not code. Roles read, by family:

  short_vqa, document_qa, counting   image, question, answer (a list: its most frequent value); or, where a
                                     source keeps all of an image's questions in one row, qa (a list of
                                     {question, answer}) or questions and answers (parallel lists): one turn each
  multiple_choice                    image, question, choices, answer (index, letter or text: `answer_kind`)
  yes_no                             image, question (through the entry's `template`), answer (bool, 0/1, yes/no);
                                     or qa, or questions and answers, as above
  captioning                         image, caption (a list: its first)
  transcription                      image, text
  reasoning                          image, question, answer, explanation
  screenshot_to_code                 image, code (the entry's `style`: html or tikz)
  two_images                         image_0 and image_1, or images; question and answer, or answer alone
                                     (a list of differences)
  text_only                          conversations ([{from, value}]), turns (alternating strings), or
                                     question, context, answer
  math                               question, answer

Every random choice comes from the `random.Random` the caller seeds with the row, so a rebuild is identical.
A row a formatter cannot read raises `FormatError` naming the field, and the row is counted as unreadable.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cauldron import phrasings
from cauldron.registry import Entry

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_YES = {"yes", "true", "1", "hateful"}
_NO = {"no", "false", "0", "not-hateful"}


class FormatError(ValueError):
    """A row that does not hold what its entry says (a missing field, an answer outside the choices...)."""


@dataclass
class Example:
    images: list[bytes]
    turns: list[tuple[str, str]]  # (user, assistant)


# reading fields -------------------------------------------------------------------------------------------------
def _get(row: dict, entry: Entry, role: str, required: bool = True):
    column = entry.fields.get(role)
    value = row.get(column) if column else None
    if required and (value is None or value == "" or value == []):
        raise FormatError(f"field {column or role!r} ({role}) is missing or empty")
    return value


def _text(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _one_answer(value) -> str:
    """A list of annotators' answers -> the most frequent (the first among ties); a value -> its text."""
    if isinstance(value, (list, tuple)):
        answers = [_text(v) for v in value if v is not None and _text(v)]
        if not answers:
            raise FormatError("answer list is empty")
        counts = Counter(answers)
        return max(answers, key=lambda a: (counts[a], -answers.index(a)))
    return _text(value)


def _yes_no(value) -> str:
    text = _text(value).lower()
    if text in _YES:
        return "Yes"
    if text in _NO:
        return "No"
    raise FormatError(f"answer {text!r} is not yes/no")


def _image(value) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    raise FormatError("image without bytes")


def images_of(row: dict, entry: Entry) -> list[bytes]:
    if "images" in entry.fields:
        values = _get(row, entry, "images")
        if not isinstance(values, (list, tuple)):
            raise FormatError(f"field {entry.fields['images']!r} is not a list of images")
        return [_image(v) for v in values]
    roles = [r for r in ("image", "image_0", "image_1") if r in entry.fields]
    return [_image(_get(row, entry, r)) for r in roles]


def _question(row: dict, entry: Entry) -> str:
    return entry.template.format(question=_text(_get(row, entry, "question")))


def _qa_pairs(row: dict, entry: Entry) -> list[tuple[str, object]]:
    """(question text, raw answer) pairs: one per row, or every pair of a row that holds all of an image's
    questions (`qa`: a list of {question, answer}, as vikhyatk/dvqa; `questions` and `answers`: parallel lists,
    as howard-hou/OCR-VQA)."""
    if "qa" in entry.fields:
        column = entry.fields["qa"]
        try:
            pairs = [(p["question"], p["answer"]) for p in _get(row, entry, "qa")]
        except (TypeError, KeyError):
            raise FormatError(f"field {column!r} is not a list of {{question, answer}}") from None
    elif "questions" in entry.fields:
        questions, answers = _get(row, entry, "questions"), _get(row, entry, "answers")
        if not isinstance(questions, (list, tuple)) or not isinstance(answers, (list, tuple)) \
                or len(questions) != len(answers):
            raise FormatError(f"fields {entry.fields['questions']!r} and {entry.fields['answers']!r} are not lists "
                              "of the same length")
        pairs = list(zip(questions, answers))
    else:
        return [(_question(row, entry), _get(row, entry, "answer"))]
    if any(q is None or a is None or not _text(q) or not _text(a) for q, a in pairs):
        raise FormatError(f"a question or an answer of field {entry.fields.get('qa') or entry.fields['questions']!r} "
                          "is missing or empty")
    return [(entry.template.format(question=_text(q)), a) for q, a in pairs]


def _asked(row, entry, rng, hints: tuple[str, ...], answer) -> list[tuple[str, str]]:
    """One turn per question, each with its own drawn hint."""
    return [(f"{question}\n{rng.choice(hints)}", answer(value)) for question, value in _qa_pairs(row, entry)]


# the families --------------------------------------------------------------------------------------------------
def short_vqa(row, entry, rng):
    return _asked(row, entry, rng, phrasings.BRIEF, _one_answer)


def document_qa(row, entry, rng):
    return _asked(row, entry, rng, phrasings.DOCUMENT, _one_answer)


def counting(row, entry, rng):
    return _asked(row, entry, rng, phrasings.COUNT, _one_answer)


def _choices(row, entry) -> list[str]:
    value = _get(row, entry, "choices")
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise FormatError(f"field {entry.fields['choices']!r} is not a list") from None
    if not isinstance(value, (list, tuple)) or not value or len(value) > len(LETTERS):
        raise FormatError(f"field {entry.fields['choices']!r} is not a list of 1 to 26 choices")
    return [_text(v) for v in value]


def multiple_choice(row, entry, rng):
    """The paper's A.3.1 prompt; a text answer missing from the choices (Visual7W lists only the wrong ones) is
    inserted at a seeded position."""
    choices, answer = _choices(row, entry), _get(row, entry, "answer")
    if entry.answer_kind == "text":
        answer = _one_answer(answer)
        if answer not in choices:
            choices.insert(rng.randrange(len(choices) + 1), answer)
        position = choices.index(answer)
    elif entry.answer_kind == "letter":
        position = LETTERS.find(_text(answer).upper()[:1]) if _text(answer) else -1
    else:
        try:
            position = int(answer)
        except (TypeError, ValueError):
            position = -1
    if not 0 <= position < len(choices):
        raise FormatError(f"answer {answer!r} does not point at one of {len(choices)} choices")
    listed = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    user = phrasings.MC_TEMPLATE.format(question=_question(row, entry), choices=listed)
    return [(user, phrasings.MC_ANSWER.format(letter=LETTERS[position]))]


def yes_no(row, entry, rng):
    return _asked(row, entry, rng, phrasings.YES_NO, _yes_no)


def captioning(row, entry, rng):
    caption = _get(row, entry, "caption")
    caption = _text(caption[0]) if isinstance(caption, (list, tuple)) else _text(caption)
    return [(rng.choice(phrasings.CAPTION), caption)]


def transcription(row, entry, rng):
    return [(rng.choice(phrasings.TRANSCRIBE), _text(_get(row, entry, "text")))]


def reasoning(row, entry, rng):
    explanation = _get(row, entry, "explanation")
    if isinstance(explanation, (list, tuple)):
        explanation = " ".join(_text(e) for e in explanation)
    answer = _one_answer(_get(row, entry, "answer"))
    return [(f"{_question(row, entry)}\n{rng.choice(phrasings.REASON)}", f"{_text(explanation)}\nAnswer: {answer}")]


def screenshot_to_code(row, entry, rng):
    return [(rng.choice(phrasings.TO_CODE[entry.style or "html"]), _text(_get(row, entry, "code")))]


def two_images(row, entry, rng):
    answer = _get(row, entry, "answer")
    if "question" not in entry.fields:  # spot the difference: the answer lists the changes
        changes = [answer] if isinstance(answer, str) else list(answer)
        return [(rng.choice(phrasings.DIFFERENCES), "\n".join(_text(c) for c in changes if _text(c)))]
    if isinstance(answer, bool) or _text(answer).lower() in _YES | _NO:
        return [(f"{_question(row, entry)}\n{rng.choice(phrasings.YES_NO)}", _yes_no(answer))]
    return [(_question(row, entry), _one_answer(answer))]


_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _pairs(messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(role, text) messages -> (user, assistant) turns; a system message is prepended to the next user text."""
    turns, system, user = [], "", None
    for role, text in messages:
        if role == "system":
            system = f"{text}\n\n"
        elif role == "user":
            user = system + text
            system = ""
        elif user is not None:
            turns.append((user, text))
            user = None
    if not turns:
        raise FormatError("no user/assistant exchange in the conversation")
    return turns


def text_only(row, entry, rng):
    if "conversations" in entry.fields:
        messages = _get(row, entry, "conversations")
        try:
            return _pairs([(_ROLES.get(str(m["from"]).lower(), "?"), _text(m["value"])) for m in messages])
        except (TypeError, KeyError):
            raise FormatError(f"field {entry.fields['conversations']!r} is not a list of {{from, value}}") from None
    if "turns" in entry.fields:
        texts = [_text(t) for t in _get(row, entry, "turns")]
        return _pairs([("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)])
    context = _get(row, entry, "context", required=False)
    question = _text(_get(row, entry, "question"))
    user = f"{question}\n\n{_text(context)}" if context else question
    return [(user, _text(_get(row, entry, "answer")))]


def math(row, entry, rng):
    return [(_text(_get(row, entry, "question")), _text(_get(row, entry, "answer")))]


FORMATTERS: dict[str, Callable[[dict, Entry, random.Random], list[tuple[str, str]]]] = {
    "short_vqa": short_vqa, "document_qa": document_qa, "counting": counting, "multiple_choice": multiple_choice,
    "yes_no": yes_no, "captioning": captioning, "transcription": transcription, "reasoning": reasoning,
    "screenshot_to_code": screenshot_to_code, "two_images": two_images, "text_only": text_only, "math": math,
}


def row_rng(entry: Entry, row_number: int) -> random.Random:
    """The row's own random source: the same row of the same subset draws the same phrasing in every rebuild."""
    return random.Random(f"{entry.name}:{row_number}")


def format_row(entry: Entry, row: dict, row_number: int) -> Example:
    turns = FORMATTERS[entry.family](row, entry, row_rng(entry, row_number))
    turns = [(u, a) for u, a in turns if u and a]
    if not turns:
        raise FormatError("empty question or answer")
    return Example([] if entry.text_only else images_of(row, entry), turns)
