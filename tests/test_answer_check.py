"""The answer checker: exact answers pass, near misses and refusals fail."""

import random

import pytest

from safelatent.data.answer_check import check_answer, extract_answer
from safelatent.data.benign_tasks import FAMILIES


@pytest.mark.parametrize(("response", "expected", "ok"), [
    ("53 + 38 = 91. Answer: 91", "91", True),
    ("Answer: 91.", "91", True),
    ("Answer: 91.0", "91", True),
    ("91", "91", True),
    ("Answer: 92", "91", False),
    ("Answer: 12, 91", "91", False),
    ("The answer is 91", "91", False),
    ("In order: 2,5, 9. Answer: 2 ,5,9", "2, 5, 9", True),
    ("Answer: 9, 5, 2", "2, 5, 9", False),
    ("Answer:  NEW   delhi", "New Delhi", True),
    ("Answer: g - a - r - d - e - n", "g-a-r-d-e-n", True),
    ("Answer: g-a-r-d-e", "g-a-r-d-e-n", False),
    ("I'm sorry, but I can't help with that request.", "91", False),
    ("Answer: a young dog\nAnything else?", "a young dog", True),
])
def test_check_answer(response, expected, ok):
    assert check_answer(response, expected) is ok


def test_last_answer_marker_wins():
    assert extract_answer("Answer: 3. Wait, no. Answer: 4") == "4"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_every_family_checks_its_own_answers(family):
    rng = random.Random(0)
    for template in family.templates:
        task = family.sample(rng, template)
        assert check_answer(task.response, task.answer), (template, task)
        assert not check_answer("Sorry, I can't assist with that.", task.answer)
        assert "{" not in task.prompt, f"unfilled slot in {task.prompt!r}"


def test_sorting_directions_are_right():
    family = next(family for family in FAMILIES if family.name == "sorting")
    rng = random.Random(1)
    for template in family.templates:
        task = family.sample(rng, template)
        items = task.answer.split(", ")
        keys = [int(item) for item in items] if items[0].isdigit() else items
        descending = "largest to smallest" in template or "descending" in template
        assert keys == sorted(keys, reverse=descending), (template, task.answer)


def test_arithmetic_answers_are_correct():
    family = next(family for family in FAMILIES if family.name == "arithmetic")
    rng = random.Random(2)
    for _ in range(200):
        task = family.sample(rng, "Compute {a} {op_symbol} {b}.")
        expression = task.prompt.removeprefix("Compute ").removesuffix(".")
        assert eval(expression) == int(task.answer)  # the prompt holds only digits and one operator
