"""The `language` step as a pipeline declares it: fastText language identification, OBELICS's rule by default."""

from __future__ import annotations

import re
from dataclasses import dataclass

from filters.language import LID176, LanguageFilter, check_model_file, model_file, parse_model
from pipelines.options import UsageError, normalise_path, option
from pipelines.steps import RunContext, StepSpec

# OBELICS's document-level cut (github.com/huggingface/OBELICS, config_filter_web_documents.yaml,
# lang_id_doc_level_min_cutoff: 0.8, applied with target language "en" by WebDocumentFilteringDocLevel)
OBELICS_LANGUAGE, OBELICS_MIN_SCORE = "en", 0.8
LABEL = re.compile(r"[^\s,]+")


@dataclass
class LanguageOptions:
    model: str = option(LID176, "fastText language identifier: a local .bin/.ftz file, or hf://OWNER/REPO"
                        "[@REVISION]/FILE (default: fastText's lid.176.bin, the model OBELICS used)", path=True,
                        flag="--lang-model", metavar="MODEL")
    lang: str = option(OBELICS_LANGUAGE, "keep documents whose top language is one of these labels, comma-separated "
                       "(the model's labels without __label__: en, fr, ... for lid.176)", flag="--lang",
                       metavar="LABELS")
    min_score: float = option(OBELICS_MIN_SCORE, "and whose probability is at least this (OBELICS's cut)",
                              flag="--lang-min-score")
    batch_size: int = option(256, "documents per fastText call", changes_output=False, flag="--lang-batch-size")

    def languages(self) -> tuple[str, ...]:
        labels = tuple(label.strip().removeprefix("__label__") for label in self.lang.split(","))
        if not labels or not all(LABEL.fullmatch(label) for label in labels):
            raise UsageError(f"--lang {self.lang}: give language labels separated by commas, e.g. en or en,fr")
        return labels

    def model_file(self) -> str:
        """The model's local file, checked (a Hub file is downloaded here, once, before any task starts)."""
        try:
            parse_model(self.model)
            path = model_file(self.model)
        except UsageError as error:
            raise UsageError(f"--lang-model {error}") from None
        except Exception as error:  # noqa: BLE001 - not found, no network, no access: the flag's problem
            raise UsageError(f"--lang-model {self.model}: cannot be downloaded from the Hub "
                             f"({type(error).__name__})") from None
        try:
            check_model_file(path)
        except UsageError as error:
            raise UsageError(f"--lang-model {error}") from None
        return path


def build_language(options: LanguageOptions, ctx: RunContext) -> LanguageFilter:
    if not 0 <= options.min_score <= 1:
        raise UsageError(f"--lang-min-score {options.min_score}: must be between 0 and 1")
    if options.batch_size < 1:
        raise UsageError(f"--lang-batch-size {options.batch_size}: must be at least 1")
    languages = options.languages()
    options.model_file()
    return LanguageFilter(normalise_path(options.model), languages, options.min_score,
                          exclusion_writer=ctx.recorder("language"), batch_size=options.batch_size)


LANGUAGE = StepSpec("language", build_language, LanguageOptions,
                    title="language identification (step language)")
