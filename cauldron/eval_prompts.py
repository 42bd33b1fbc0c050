"""The evaluation prompts of the Idefics2 paper (appendix A.3.1), for users who evaluate a model trained on this.

Multiple choice: "Question: {question}\\nChoices:\\nA. ...\\nAnswer with the letter." and the model answers
"Answer: {letter}"; open-ended: "Question: {question} Give a very brief answer."; generation stops at any of the
stop words. `parse_choice` reads the letter back from a generation.
"""

from __future__ import annotations

import re

from cauldron.formatters import LETTERS

STOP_WORDS = ("Question", "User", "<end_of_utterance>", "<eos>")  # paper, appendix A.3.1
OPEN_ENDED = "Question: {question} Give a very brief answer."
MULTIPLE_CHOICE = "Question: {question}\nChoices:\n{choices}\nAnswer with the letter."
_LETTER = re.compile(r"(?:Answer:\s*)?\(?([A-Z])\)?(?:[.:\s]|$)")


def open_ended(question: str) -> str:
    return OPEN_ENDED.format(question=question.strip())


def multiple_choice(question: str, choices: list[str]) -> str:
    if not 1 <= len(choices) <= len(LETTERS):
        raise ValueError(f"{len(choices)} choices: give 1 to {len(LETTERS)}")
    listed = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return MULTIPLE_CHOICE.format(question=question.strip(), choices=listed)


def truncate_at_stop_words(generation: str, stop_words: tuple[str, ...] = STOP_WORDS) -> str:
    """The generation up to the first stop word, stripped."""
    cut = min((i for i in (generation.find(w) for w in stop_words) if i >= 0), default=len(generation))
    return generation[:cut].strip()


def parse_choice(generation: str, n_choices: int) -> str | None:
    """The letter a generation answers with (`Answer: B`, `B.`, `(B)`), or None when it names none in range."""
    match = _LETTER.search(truncate_at_stop_words(generation).strip())
    if match and LETTERS.index(match.group(1)) < n_choices:
        return match.group(1)
    return None
