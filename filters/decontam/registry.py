"""The evaluation sets training data must not contain: where each lives and which fields hold what.

The paper reports on VQAv2, TextVQA, OKVQA, COCO captions, DocVQA, MMMU, MathVista and MMBench; ChartQA, AI2D,
InfographicVQA, ScienceQA and MMStar are the other common ones. The Hub ids, configs and field names are those
the common evaluation harnesses load; they could not be checked from this machine (no network), so `build`
reports a clear error if one has moved, and `--from` takes the same sets from local files.
"""

from __future__ import annotations

from dataclasses import dataclass


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


MMMU_SUBJECTS = (
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
    "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance", "Geography",
    "History", "Literature", "Manage", "Marketing", "Materials", "Math", "Mechanical_Engineering", "Music",
    "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology",
)

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    # the paper's
    Benchmark("vqav2", "HuggingFaceM4/VQAv2", "validation", answer_field="multiple_choice_answer",
              id_field="question_id"),
    Benchmark("textvqa", "facebook/textvqa", "validation", answer_field="answers", id_field="question_id"),
    Benchmark("okvqa", "HuggingFaceM4/OK-VQA", "val", answer_field="answers", id_field="question_id"),
    Benchmark("coco_captions", "lmms-lab/COCO-Caption2017", "val", question_field=None, answer_field="answer",
              id_field="question_id"),
    Benchmark("docvqa", "lmms-lab/DocVQA", "validation", ("DocVQA",), answer_field="answers",
              id_field="questionId"),
    Benchmark("mmmu", "MMMU/MMMU", "validation", MMMU_SUBJECTS, tuple(f"image_{i}" for i in range(1, 8)),
              id_field="id"),
    Benchmark("mathvista", "AI4Math/MathVista", "testmini", image_fields=("decoded_image",), id_field="pid"),
    Benchmark("mmbench", "lmms-lab/MMBench", "dev", ("en",), id_field="index"),
    # the other common ones
    Benchmark("chartqa", "HuggingFaceM4/ChartQA", "test", question_field="query", answer_field="label"),
    Benchmark("ai2d", "lmms-lab/ai2d", "test"),
    Benchmark("infographicvqa", "lmms-lab/DocVQA", "validation", ("InfographicVQA",), answer_field="answers",
              id_field="questionId"),
    Benchmark("scienceqa", "derek-thomas/ScienceQA", "test"),
    Benchmark("mmstar", "Lin-Chen/MMStar", "val", id_field="index"),
)}

# fields tried, in order, for a local set that is not in the registry
GENERIC = Benchmark("local", "", "local", image_fields=("image", "images", "img"), question_field="question",
                    answer_field="answer", id_field="id")
