import datasets
import pytest

from safelatent.data.prompts import PromptMix, kind_counts, prompt_pool, prompts_for_step

ROWS = ([{"kind": "harmful", "prompt": f"harm {i}"} for i in range(10)]
        + [{"kind": "benign", "prompt": f"task {i}"} for i in range(10)]
        + [{"kind": "benign", "prompt": "task 0"}, {"kind": "pair", "prompt": "pair 0"}])


@pytest.fixture
def pool():
    return prompt_pool(datasets.Dataset.from_list(ROWS), ["harmful", "benign"])


def test_the_pool_holds_distinct_prompts_of_the_asked_kinds(pool):
    assert len(pool["harmful"]) == 10 and len(pool["benign"]) == 10
    assert "pair 0" not in pool["harmful"] + pool["benign"]


def test_a_kind_with_no_prompts_is_a_clear_error():
    with pytest.raises(ValueError, match="borderline"):
        prompt_pool(datasets.Dataset.from_list(ROWS), ["harmful", "borderline"])


def test_counts_follow_the_weights_and_add_up():
    assert kind_counts({"harmful": 0.35, "benign": 0.4, "jailbreak": 0.15, "borderline": 0.1}, 16) == {
        "harmful": 6, "benign": 6, "jailbreak": 2, "borderline": 2}
    assert sum(kind_counts({"a": 1, "b": 1, "c": 1}, 10).values()) == 10
    assert kind_counts({"a": 1, "b": 0}, 5) == {"a": 5}


def test_each_step_draws_the_same_prompts_on_every_call(pool):
    weights = {"harmful": 0.5, "benign": 0.5}
    first = prompts_for_step(pool, weights, 8, seed=0, step=3)
    assert first == prompts_for_step(pool, weights, 8, seed=0, step=3)
    assert first != prompts_for_step(pool, weights, 8, seed=0, step=4)
    assert sum(prompt.startswith("harm") for prompt in first) == 4
    assert len(prompts_for_step(pool, weights, 40, seed=0, step=0)) == 40  # more than the pool: with replacement


def test_unknown_kinds_and_empty_mixes_are_rejected():
    with pytest.raises(ValueError, match="unknown prompt kinds"):
        PromptMix(weights={"harmfull": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        PromptMix(weights={"harmful": 0.0})
