"""Stage specs as data: a TOML file (read with the standard library's `tomllib`) says which pipeline outputs feed a
pre-training stage, in which shares, with which limits. `mixtures/stage1.toml` and `stage2.toml` hold the paper's
two stages (section 4.1), each number next to the sentence it comes from; adding a source or a stage is editing
or adding such a file.

    name = "stage2"
    image_max_side = 980          # longest image side, px
    image_tokens = 64             # tokens an image costs
    jpeg_quality = 90
    [scale_up]                    # optional: random scale-up of images below the cap
    probability = 0.5
    [sources.NAME]                # one table per source
    format = "obelics"            # obelics | pairs | pages (the pipeline output it reads)
    paths = ["obelics"]           # pipeline output folders (relative ones under --sources-root)
    share = 0.45                  # of the samples; shares sum to 1
    max_tokens = 2048             # longest sample, image tokens included
    too_long = "split"            # split | drop
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources

from filters.errors import UsageError

FORMATS = ("obelics", "pairs", "pages")
TOO_LONG = ("split", "drop")
SHARE_TOLERANCE = 1e-6  # shares are written with a few decimals; their sum must be 1 up to rounding


@dataclass(frozen=True)
class ScaleUp:
    """With `probability`, an image is scaled up to a longest side drawn uniformly between its own and the cap."""

    probability: float = 0.0


@dataclass(frozen=True)
class SourceSpec:
    name: str
    format: str
    paths: tuple[str, ...]
    share: float
    max_tokens: int
    too_long: str = "split"


@dataclass(frozen=True)
class StageSpec:
    name: str
    image_max_side: int
    image_tokens: int
    sources: tuple[SourceSpec, ...]
    jpeg_quality: int = 90
    scale_up: ScaleUp = field(default_factory=ScaleUp)
    path: str = ""  # the file it was read from

    def source(self, name: str) -> SourceSpec:
        return next(s for s in self.sources if s.name == name)

    def to_json(self) -> dict:
        value = asdict(self)
        value.pop("path")
        return value


def spec_path(stage: str) -> str:
    """`1`/`2` (or `stage1`) name a shipped spec; anything else is a TOML file's path."""
    shipped = {"1": "stage1", "2": "stage2", "stage1": "stage1", "stage2": "stage2"}
    if stage in shipped:
        return str(resources.files("mixtures").joinpath(f"{shipped[stage]}.toml"))
    return stage


def load_spec(stage: str) -> StageSpec:
    """The spec `--stage` names; a UsageError (one line naming the file and the key) when it is not usable."""
    path = spec_path(stage)
    if not os.path.isfile(path):
        raise UsageError(f"--stage {stage}: not 1, 2 or a TOML file")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"--stage {path}: not valid TOML ({error})") from None
    return parse_spec(data, path)


def _get(table: dict, key: str, kind: type | tuple, where: str, default=None):
    value = table.get(key, default)
    if value is None or isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise UsageError(f"{where}: `{key}` must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
    return value


def parse_spec(data: dict, path: str) -> StageSpec:
    name = _get(data, "name", str, path)
    cap = _get(data, "image_max_side", int, path)
    tokens = _get(data, "image_tokens", int, path)
    quality = _get(data, "jpeg_quality", int, path, 90)
    if cap < 1 or tokens < 0 or not 1 <= quality <= 95:
        raise UsageError(f"{path}: image_max_side >= 1, image_tokens >= 0 and 1 <= jpeg_quality <= 95 expected")
    scale = data.get("scale_up", {})
    probability = float(_get(scale, "probability", (int, float), f"{path} [scale_up]", 0.0))
    if not 0 <= probability <= 1:
        raise UsageError(f"{path} [scale_up]: probability must be between 0 and 1")
    tables = data.get("sources")
    if not isinstance(tables, dict) or not tables:
        raise UsageError(f"{path}: no [sources.NAME] tables")
    sources = tuple(_parse_source(name_, table, f"{path} [sources.{name_}]") for name_, table in tables.items())
    total = sum(s.share for s in sources)
    if not math.isclose(total, 1.0, abs_tol=SHARE_TOLERANCE):
        raise UsageError(f"{path}: the shares sum to {total:g}, not 1")
    return StageSpec(name, cap, tokens, sources, quality, ScaleUp(probability), path)


def _parse_source(name: str, table: dict, where: str) -> SourceSpec:
    if not isinstance(table, dict) or not name.replace("_", "").isalnum():
        raise UsageError(f"{where}: a source is a table with a name of letters, digits and '_'")
    fmt = _get(table, "format", str, where)
    if fmt not in FORMATS:
        raise UsageError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    paths = _get(table, "paths", list, where, [])
    if not all(isinstance(p, str) and p for p in paths):
        raise UsageError(f"{where}: `paths` must be a list of folders")
    share = float(_get(table, "share", (int, float), where))
    max_tokens = _get(table, "max_tokens", int, where)
    too_long = _get(table, "too_long", str, where, "split")
    if not 0 < share <= 1 or max_tokens < 1 or too_long not in TOO_LONG:
        raise UsageError(f"{where}: 0 < share <= 1, max_tokens >= 1 and too_long in {TOO_LONG} expected")
    return SourceSpec(name, fmt, tuple(paths), share, max_tokens, too_long)
