"""The Cauldron's registry: every subset and text-only set of the paper's Table 14, read from `registry.toml`.

The numbers (images, Q/A pairs, answer tokens, mixture share) are Table 14's (Idefics2 paper, section 4.2); the
source of each entry (Hub id, config, split, field mapping) is data too, with a `verified` note saying where it
was checked. Names are the published configs of `HuggingFaceM4/the_cauldron`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from filters.errors import UsageError

PUBLISHED_HUB_ID = "HuggingFaceM4/the_cauldron"


@dataclass(frozen=True)
class Entry:
    """One subset (or text-only set) and where its rows come from."""

    name: str
    title: str
    group: str  # Table 14's section
    family: str  # the formatter (cauldron.formatters.FORMATTERS)
    hub_id: str
    config: str
    split: str
    fields: dict = field(hash=False)  # role -> source column
    images: int
    qa_pairs: int
    answer_tokens: int
    share: float  # % of the mixture's answer tokens
    verified: str
    answer_kind: str = "text"
    template: str = "{question}"  # how the question field becomes the user's text (yes/no statements)
    style: str = ""  # screenshot_to_code: "html" or "tikz"
    text_only: bool = False

    @property
    def source_string(self) -> str:
        """The `source` of each turn in the published schema: the config name."""
        return self.name


@cache
def entries() -> dict[str, Entry]:
    """Every entry by name: the 50 subsets first, then the text-only sets, in registry order."""
    with resources.files("cauldron").joinpath("registry.toml").open("rb") as f:
        data = tomllib.load(f)
    out = {}
    for kind, text_only in (("subset", False), ("text_only", True)):
        for raw in data[kind]:
            out[raw["name"]] = Entry(**raw, text_only=text_only)
    return out


def subsets() -> list[Entry]:
    return [e for e in entries().values() if not e.text_only]


def text_only_sets() -> list[Entry]:
    return [e for e in entries().values() if e.text_only]


def select(text: str) -> list[Entry]:
    """`all`, `subsets` (the 50 image subsets), `text` (the text-only sets) or a comma list of names."""
    if text == "all":
        return list(entries().values())
    if text == "subsets":
        return subsets()
    if text == "text":
        return text_only_sets()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in entries()]
    if unknown or not names:
        raise UsageError(f"--subsets: unknown subset {unknown[0] if unknown else text!r} (see --list)")
    return [entries()[n] for n in dict.fromkeys(names)]


def renormalised_shares(names: list[str]) -> dict[str, float]:
    """Table 14's shares of the named entries, rescaled to sum to 1 (the mixture over the sets present)."""
    total = sum(entries()[n].share for n in names)
    return {n: entries()[n].share / total for n in names}


def listing() -> str:
    """`--list`: name, family and Table 14 share, one entry a line."""
    lines = [f"{'name':<24}{'family':<20}{'share %':>8}  source"]
    for e in entries().values():
        source = e.hub_id or "(no verified Hub source: use --source DIR)"
        lines.append(f"{e.name:<24}{e.family:<20}{e.share:>8.2f}  {source}")
    return "\n".join(lines)


def table14() -> dict[str, dict]:
    """Table 14's figures per entry name, as `mixtures.validate` compares an export with them."""
    return {e.name: {"images": e.images, "qa_pairs": e.qa_pairs, "answer_tokens": e.answer_tokens,
                     "share": e.share, "title": e.title, "group": e.group} for e in entries().values()}


TABLE14 = table14()
