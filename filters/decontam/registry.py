"""The evaluation sets training data must not contain: where each lives and which fields hold what.

The paper reports on VQAv2, TextVQA, OKVQA, COCO captions, DocVQA, MMMU, MathVista and MMBench; ChartQA, AI2D,
InfographicVQA, ScienceQA and MMStar are the other common ones. Every entry is a parquet release that the pinned
`datasets` loads (the loading-script repositories HuggingFaceM4/VQAv2, facebook/textvqa and HuggingFaceM4/OK-VQA
are refused by `datasets` >= 4), checked against the lmms-eval task configuration that loads it; the URL beside
each entry is that configuration. lmms-eval has moved some sets between Hub organisations (lmms-lab ->
lmms-lab-encoder), so `build` reports a clear error if one has moved, and `--from` takes the same sets from files.

Multiple-choice sets store the answer as a letter or an option index; text matching needs the option's words,
so `choices` says where the options are and `answer_kind` how the answer points at one.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Benchmark:
    name: str
    hub_id: str
    split: str
    configs: tuple[str | None, ...] = (None,)
    image_fields: tuple[str, ...] = ("image",)
    question_field: str | None = "question"
    answer_field: str | None = "answer"  # a string, or a list of strings
    id_field: str | None = None  # the item's id; the row number when None
    # where the options of a multiple-choice item are: a field holding a list (or the Python literal of one, as
    # MMMU stores it), "columns" (one column per letter, A to E, as MMBench), or "question" (listed in the
    # question text after "Options:", as MMStar)
    choices: str | None = None
    answer_kind: str = "text"  # "text", "letter" (A, B, ...) or "index" (0, 1, ... as int or string)
    source: str = ""  # where the entry was checked


def _options(row: dict, where: str) -> list[str]:
    if where == "columns":
        return [str(row[k]) for k in LETTERS if k in row and _present(row[k])]
    if where == "question":
        _, _, listed = str(row.get("question") or "").partition("Options:")
        parts = re.split(r"(?:^|,)\s*[A-J]:\s", listed.strip())
        return [p.strip() for p in parts[1:]]
    value = row.get(where)
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) != "nan"


def question_text(row: dict, spec: Benchmark) -> str | None:
    """The question as a training copy would carry it: without an options list appended to it (MMStar)."""
    question = row.get(spec.question_field) if spec.question_field else None
    if question is None or spec.choices != "question":
        return question
    return str(question).partition("Options:")[0].strip()


def answer_texts(row: dict, spec: Benchmark) -> list[str]:
    """The answer(s) of a row as text: for multiple choice, the chosen option's words, not its letter."""
    value = row.get(spec.answer_field) if spec.answer_field else None
    if value is None:
        return []
    if spec.answer_kind == "text":
        if isinstance(value, (list, tuple)):
            return list(dict.fromkeys(str(v) for v in value if v is not None))[:5]
        return [str(value)]
    options = _options(row, spec.choices or "")
    try:
        position = LETTERS.index(str(value).strip().upper()) if spec.answer_kind == "letter" else int(value)
    except ValueError:
        return []
    return [options[position]] if 0 <= position < len(options) else []


MMMU_SUBJECTS = (
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
    "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance", "Geography",
    "History", "Literature", "Manage", "Marketing", "Materials", "Math", "Mechanical_Engineering", "Music",
    "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology",
)

_TASKS = "https://github.com/EvolvingLMMs-Lab/lmms-eval/blob/main/lmms_eval/tasks/"

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    # the paper's
    Benchmark("vqav2", "lmms-lab/VQAv2", "validation", answer_field="multiple_choice_answer", id_field="question_id",
              source=_TASKS + "vqav2/vqav2_val.yaml"),
    Benchmark("textvqa", "lmms-lab/textvqa", "validation", answer_field="answers", id_field="question_id",
              source=_TASKS + "textvqa/_default_template_textvqa_yaml"),
    Benchmark("okvqa", "lmms-lab/OK-VQA", "val2014", answer_field="answers", id_field="question_id",
              source=_TASKS + "ok_vqa/ok_vqa_val2014.yaml"),
    Benchmark("coco_captions", "lmms-lab/COCO-Caption2017", "val", question_field=None, answer_field="answer",
              id_field="question_id", source=_TASKS + "coco_cap/coco2017_cap_val.yaml"),
    Benchmark("docvqa", "lmms-lab/DocVQA", "validation", ("DocVQA",), answer_field="answers", id_field="questionId",
              source=_TASKS + "docvqa/_default_template_docvqa_yaml"),
    Benchmark("mmmu", "MMMU/MMMU", "validation", MMMU_SUBJECTS, tuple(f"image_{i}" for i in range(1, 8)),
              id_field="id", choices="options", answer_kind="letter",
              source="https://huggingface.co/datasets/MMMU/MMMU (options: the literal of a list, "
                     + _TASKS + "mmmu/utils.py)"),
    Benchmark("mathvista", "AI4Math/MathVista", "testmini", image_fields=("decoded_image",), id_field="pid",
              source=_TASKS + "mathvista/mathvista_testmini.yaml"),
    Benchmark("mmbench", "lmms-lab/MMBench", "dev", ("en",), id_field="index", choices="columns",
              answer_kind="letter", source=_TASKS + "mmbench/mmbench_en_dev.yaml"),
    # the other common ones
    Benchmark("chartqa", "lmms-lab/ChartQA", "test", source=_TASKS + "chartqa/chartqa.yaml"),
    Benchmark("ai2d", "lmms-lab/ai2d", "test", choices="options", answer_kind="index",
              source=_TASKS + "ai2d/ai2d.yaml"),
    Benchmark("infographicvqa", "lmms-lab/DocVQA", "validation", ("InfographicVQA",), answer_field="answers",
              id_field="questionId", source=_TASKS + "infovqa/"),
    Benchmark("scienceqa", "lmms-lab/ScienceQA", "test", ("ScienceQA-IMG",), choices="choices",
              answer_kind="index", source=_TASKS + "scienceqa/scienceqa_img.yaml"),
    Benchmark("mmstar", "Lin-Chen/MMStar", "val", id_field="index", choices="question", answer_kind="letter",
              source=_TASKS + "mmstar/mmstar.yaml"),
)}

# fields tried, in order, for a local set that is not in the registry
GENERIC = Benchmark("local", "", "local", image_fields=("image", "images", "img"), question_field="question",
                    answer_field="answer", id_field="id")
