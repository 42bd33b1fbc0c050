"""The registry and the formatters: every entry, on a row in its source's schema (the shipped sample)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from cauldron import eval_prompts, registry
from cauldron.formatters import FORMATTERS, FormatError, format_row
from pipelines.demo import sample_path
from tests.conftest import run_command

# HuggingFaceM4/the_cauldron's 50 configs, as its dataset viewer lists them
PUBLISHED = """ai2d aokvqa chart2text chartqa clevr clevr_math cocoqa datikz diagram_image_to_text docvqa dvqa figureqa
finqa geomverse hateful_memes hitab iam iconqa infographic_vqa intergps localized_narratives mapqa mimic_cgd
multihiertt nlvr2 ocrvqa okvqa plotqa raven rendered_text robut_sqa robut_wikisql robut_wtq scienceqa screen2words
spot_the_diff st_vqa tabmwp tallyqa tat_qa textcaps textvqa tqa vistext visual7w visualmrc vqarad vqav2 vsr
websight""".split()
TEXT_ONLY = ["openhermes", "lima", "dolly", "metamathqa", "mathinstruct", "orca_math", "camel_ai_math",
             "atlas_math_sets", "goat"]  # Table 14's text-only rows


def test_list_names_exactly_the_published_configs_and_the_text_only_sets():
    result = run_command("pipelines.cauldron", "--list")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert len(PUBLISHED) == 50
    assert sorted(names) == sorted(PUBLISHED + TEXT_ONLY)
    assert len(names) == len(set(names)) == 59
    families = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert set(families.values()) <= set(FORMATTERS)


def test_registry_holds_table14_and_a_source_note_for_every_entry():
    entries = registry.entries()
    assert round(sum(e.share for e in entries.values()), 2) == 99.98  # Table 14's shares as printed
    assert entries["vqav2"].answer_tokens == 1595929 and entries["openhermes"].share == 12.73
    for entry in entries.values():
        assert entry.verified and entry.split and entry.fields
        assert entry.hub_id or entry.verified.startswith("unverified")


def _first_row(name: str) -> dict:
    return pq.read_table(sample_path("cauldron", "sources", f"{name}.parquet")).slice(0, 1).to_pylist()[0]


@pytest.mark.parametrize("name", PUBLISHED + TEXT_ONLY)
def test_every_entry_formats_a_row_of_its_source_schema(name):
    entry = registry.entries()[name]
    example = format_row(entry, _first_row(name), 0)
    expected_images = 0 if entry.text_only else 2 if entry.family == "two_images" else 1
    assert len(example.images) == expected_images and all(isinstance(b, bytes) for b in example.images)
    assert example.turns and all(user.strip() and answer.strip() for user, answer in example.turns)
    assert format_row(entry, _first_row(name), 0) == example  # seeded by the row: the same every time


def test_multiple_choice_is_the_papers_prompt():
    entry = registry.entries()["ai2d"]  # answer is an option index
    row = {"image": {"bytes": b"x"}, "question": "Which part eats?", "options": ["leaf", "root", "stem"],
           "answer": 1}
    (user, answer), = format_row(entry, row, 0).turns
    assert user == "Question: Which part eats?\nChoices:\nA. leaf\nB. root\nC. stem\nAnswer with the letter."
    assert answer == "Answer: B"
    with pytest.raises(FormatError, match="does not point"):
        format_row(entry, {**row, "answer": 3}, 0)


def test_multiple_choice_inserts_a_text_answer_missing_from_the_choices():
    entry = registry.entries()["visual7w"]
    row = {"image": {"bytes": b"x"}, "question": "What?", "multiple_choices": ["a cat", "a dog", "a car"],
           "answer": "a boat"}
    (user, answer), = format_row(entry, row, 5).turns
    letter = answer.removeprefix("Answer: ")
    assert f"{letter}. a boat" in user and user.count("\n") == 6


def test_short_answers_take_the_most_frequent_annotation_and_a_brevity_hint():
    entry = registry.entries()["textvqa"]
    hints = set()
    for number in range(30):
        row = {"image": {"bytes": b"x"}, "question": "What is written?", "answers": ["stop", "STOP", "stop", "go"]}
        (user, answer), = format_row(entry, row, number).turns
        assert answer == "stop"
        hints.add(user.splitlines()[-1])
    assert len(hints) > 2  # several phrasings, drawn per row


def test_yes_no_and_two_images():
    memes = registry.entries()["hateful_memes"]
    (user, answer), = format_row(memes, {"image": {"bytes": b"x"}, "text": "hello", "label": 1}, 0).turns
    assert answer == "Yes" and '"hello"' in user and user.endswith("Answer yes or no.")
    nlvr2 = registry.entries()["nlvr2"]
    example = format_row(nlvr2, {"left_image": {"bytes": b"l"}, "right_image": {"bytes": b"r"},
                                 "sentence": "Two dogs.", "label": False}, 0)
    assert example.images == [b"l", b"r"] and example.turns[0][1] == "No"


def test_text_only_conversations_become_turns():
    entry = registry.entries()["openhermes"]
    row = {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"},
                             {"from": "gpt", "value": "See you"}]}
    assert format_row(entry, row, 0).turns == [("Be kind.\n\nHi", "Hello"), ("Bye", "See you")]
    with pytest.raises(FormatError):
        format_row(entry, {"conversations": [{"from": "gpt", "value": "alone"}]}, 0)


def test_a_row_without_image_bytes_is_refused_naming_the_field():
    entry = registry.entries()["vqav2"]
    with pytest.raises(FormatError, match="image"):
        format_row(entry, {"image": {"bytes": None, "path": "a.jpg"}, "question": "q", "multiple_choice_answer": "a"},
                   0)
    with pytest.raises(FormatError, match="multiple_choice_answer"):
        format_row(entry, {"image": {"bytes": b"x"}, "question": "q"}, 0)


def test_evaluation_prompts_of_appendix_a31():
    assert eval_prompts.open_ended("What is it?") == "Question: What is it? Give a very brief answer."
    assert eval_prompts.multiple_choice("Which?", ["x", "y"]) == \
        "Question: Which?\nChoices:\nA. x\nB. y\nAnswer with the letter."
    assert eval_prompts.STOP_WORDS == ("Question", "User", "<end_of_utterance>", "<eos>")
    assert eval_prompts.truncate_at_stop_words("a cat<end_of_utterance>\nUser: more") == "a cat"
    assert eval_prompts.parse_choice("Answer: C<end_of_utterance>", 4) == "C"
    assert eval_prompts.parse_choice("Answer: E", 4) is None


def test_sources_are_a_local_folder_or_with_from_published_a_hub_id(tmp_path):
    from cauldron.sources import check_source
    from filters.errors import UsageError

    chosen = [registry.entries()["ai2d"], registry.entries()["chartqa"]]
    assert check_source("HuggingFaceM4/the_cauldron", True, chosen, True) == chosen  # read from the Hub later
    with pytest.raises(UsageError, match="no such folder"):
        check_source("HuggingFaceM4/the_cauldron", False, chosen, True)
    with pytest.raises(UsageError, match="no verified Hub source"):
        check_source(None, False, [registry.entries()["vqav2"]], True)
    assert check_source(None, False, [registry.entries()["chartqa"]], True)  # the registry's verified id
