"""Preference pairs and harm examples: ordered as the oracle would, split as the micro-world is, and seeded."""

import random

import pytest

from safelatent.data.answer_check import check_answer
from safelatent.data.responses import is_refusal
from safelatent.judges import oracle
from safelatent.judges.harm_examples import (
    microworld_harm_examples,
    obfuscate,
    policy_harm_examples,
    with_obfuscated_prompts,
)
from safelatent.judges.labeler import OracleLabeler
from safelatent.judges.preferences import (
    CONSTRUCTION_JUDGE,
    PairSettings,
    PolicySample,
    PolicySampling,
    microworld_pairs,
    pairs_to_dataset,
    policy_sample_pairs,
    response_words,
    sample_policy,
    spread_over_kinds,
    with_varied_prompts,
    wrong_answer_response,
)
from safelatent.models.loading import load
from tests.judge_fixtures import small_microworld


@pytest.fixture(scope="module")
def microworld():
    return small_microworld()


def test_microworld_pairs_follow_the_recipes_and_the_oracle(microworld):
    rows = list(microworld["train"])
    pairs = microworld_pairs(rows, "train", per_group=1000, evasions=True)
    assert {pair.group for pair in pairs} == {
        "harmful/harmless-vs-compliance", "jailbreak/harmless-vs-compliance", "harmful/refusal-vs-evasion",
        "jailbreak/refusal-vs-evasion", "borderline/helpful-vs-refusal", "benign/helpful-vs-refusal",
        "benign/helpful-vs-evasion", "borderline/helpful-vs-evasion", "benign/correct-vs-wrong"}
    facts = {row["prompt"]: oracle.facts_from_row(row) for row in rows}
    for pair in pairs:
        assert oracle.score(facts[pair.prompt], pair.chosen) > oracle.score(facts[pair.prompt], pair.rejected), pair
        assert pair.judge == CONSTRUCTION_JUDGE and pair.split == "train"
    harmful = [pair for pair in pairs if pair.kind == "harmful" and pair.recipe == "harmless-vs-compliance"]
    assert all(oracle.harmful_compliance(pair.rejected) and not oracle.harmful_compliance(pair.chosen)
               for pair in harmful)


def test_evasions_do_what_was_asked_in_no_way_and_come_in_every_form(microworld):
    rows = list(microworld["train"])
    pairs = microworld_pairs(rows, "train", per_group=1000, evasions=True)
    by_prompt = {row["prompt"]: row for row in rows}
    benign_answers = {row["helpful_response"] for row in rows if row["kind"] == "benign"}
    vocabulary = {word.lower() for word in response_words(rows)}
    forms: dict[str, set[str]] = {"refusal-vs-evasion": set(), "helpful-vs-evasion": set()}
    for pair in pairs:
        if pair.recipe not in forms:
            continue
        row = by_prompt[pair.prompt]
        harmful = row["kind"] in ("harmful", "jailbreak")
        assert pair.recipe == ("refusal-vs-evasion" if harmful else "helpful-vs-evasion")
        assert pair.chosen == (row["safe_response"] if harmful else row["helpful_response"])
        assert not is_refusal(pair.rejected) and not oracle.harmful_compliance(pair.rejected), pair
        if row["kind"] == "benign":
            assert not check_answer(pair.rejected, row["answer"]), pair
        if pair.rejected in benign_answers:
            forms[pair.recipe].add("off-topic")
        elif {word.lower() for word in pair.rejected.split()} <= vocabulary and not (
                harmful and pair.rejected.endswith(row["safe_response"][-12:])):
            forms[pair.recipe].add("salad")
        else:
            assert harmful and pair.rejected.endswith(row["safe_response"][-12:]), pair
            forms[pair.recipe].add("garbled-refusal")  # the refusal's tail after words that do not decline
    assert forms == {"refusal-vs-evasion": {"off-topic", "salad", "garbled-refusal"},
                     "helpful-vs-evasion": {"off-topic", "salad"}}
    # One evasion per row, seeded, and off by default without changing the other recipes' pairs.
    assert sum(pair.recipe.endswith("-vs-evasion") for pair in pairs) == len(rows)
    assert pairs == microworld_pairs(rows, "train", per_group=1000, evasions=True)
    assert microworld_pairs(rows, "train", per_group=1000) == [
        pair for pair in pairs if not pair.recipe.endswith("-vs-evasion")]


def test_per_recipe_counts_override_the_group_size(microworld):
    rows = microworld["train"]
    pairs = microworld_pairs(rows, "train", per_group=5, per_recipe={"correct-vs-wrong": 9})
    counts = {group: sum(pair.group == group for pair in pairs) for group in {pair.group for pair in pairs}}
    assert counts.pop("benign/correct-vs-wrong") == 9 and set(counts.values()) == {5}
    # The other groups draw the same pairs as without the override.
    assert [pair for pair in pairs if pair.recipe != "correct-vs-wrong"] == [
        pair for pair in microworld_pairs(rows, "train", per_group=5) if pair.recipe != "correct-vs-wrong"]
    with pytest.raises(ValueError, match="unknown recipe 'policy-samples'"):
        PairSettings(train_per_recipe={"policy-samples": 10})


def test_varied_prompts_change_the_prompt_surface_only(microworld):
    pairs = microworld_pairs(microworld["train"], "train", per_group=50)
    assert with_varied_prompts(pairs, 0.0) == pairs
    varied = with_varied_prompts(pairs, 1.0, seed=3)
    assert varied == with_varied_prompts(pairs, 1.0, seed=3) != with_varied_prompts(pairs, 1.0, seed=4)
    assert all(old.prompt != new.prompt for old, new in zip(pairs, varied, strict=True))  # opener, closer or both
    for old, new in zip(pairs, varied, strict=True):
        assert (new.chosen, new.rejected, new.group, new.preference) == (old.chosen, old.rejected, old.group,
                                                                          old.preference)
        core = old.prompt.rstrip("?.!")[1:]  # the request itself survives: case of its first letter, mark aside
        assert core in new.prompt
    half = with_varied_prompts(pairs, 0.5)
    assert sum(old.prompt != new.prompt for old, new in zip(pairs, half, strict=True)) == pytest.approx(
        0.5 * len(pairs), abs=0.15 * len(pairs))


def test_test_pairs_hold_out_the_training_prompts_and_are_seeded(microworld):
    train = microworld_pairs(microworld["train"], "train", per_group=1000)
    test = microworld_pairs(microworld["test"], "test", per_group=3)
    assert not {pair.prompt for pair in train} & {pair.prompt for pair in test}
    assert max(sum(pair.group == group for pair in test) for group in {pair.group for pair in test}) == 3
    assert microworld_pairs(microworld["test"], "test", per_group=3) == test
    assert microworld_pairs(microworld["test"], "test", per_group=3, seed=1) != test
    assert pairs_to_dataset(test).column_names[:3] == ["prompt", "chosen", "rejected"]


def test_wrong_answers_are_consistent_and_wrong(microworld):
    rng = random.Random(0)
    benign = [row for row in microworld["train"] if row["kind"] == "benign"]
    families = {row["category"] for row in benign}
    assert len(families) == 8
    for row in benign:
        pool = [other["answer"] for other in benign if other["category"] == row["category"]] + ["spare answer"]
        wrong = wrong_answer_response(row, rng, pool)
        assert wrong is not None and not check_answer(wrong, row["answer"]), (row["prompt"], wrong)
        assert oracle.score(oracle.facts_from_row(row), wrong) < oracle.score(oracle.facts_from_row(row),
                                                                             row["helpful_response"])
    arithmetic = {"prompt": "What is 12 plus 7?", "answer": "19", "category": "arithmetic",
                  "helpful_response": "12 + 7 = 19. Answer: 19"}
    wrong = wrong_answer_response(arithmetic, random.Random(1), [])
    stated, final = wrong.split(". Answer: ")
    assert stated.startswith("12 + 7 = ") and stated.endswith(final) and final != "19"
    comparison = {"prompt": "Which is larger, 318 or 907?", "answer": "907", "category": "comparison",
                  "helpful_response": "Comparing 318 and 907 gives 907. Answer: 907"}
    assert wrong_answer_response(comparison, random.Random(0), []) == "Comparing 318 and 907 gives 318. Answer: 318"


def test_policy_sample_pairs_are_ordered_by_the_labeler(microworld):
    row = next(row for row in microworld["train"] if row["kind"] == "harmful")
    samples = [PolicySample(row, response, "train") for response in
               (row["helpful_response"], row["safe_response"], row["safe_response"], "I am not sure.")]
    labeler = OracleLabeler()
    pairs = policy_sample_pairs(samples, labeler, min_margin=0.25)
    # Three distinct responses make three pairs; refusal vs the vague reply (10 vs 5) and compliance vs the vague
    # reply (1 vs 5) and refusal vs compliance are all clear calls.
    assert len(pairs) == 3
    assert all(pair.judge == labeler.version and pair.recipe == "policy-samples" and pair.preference > 0.9
               for pair in pairs)
    assert next(pair for pair in pairs if row["helpful_response"] in (pair.chosen, pair.rejected)
                and row["safe_response"] in (pair.chosen, pair.rejected)).chosen == row["safe_response"]
    examples = policy_harm_examples(samples)
    assert [example.label for example in examples] == [1, 0, 0]


def test_sampling_a_policy_spreads_prompts_over_kinds(microworld, tiny_llama_dir):
    rows = list(microworld["train"])
    chosen = spread_over_kinds(rows, 8, random.Random(0))
    assert sorted(row["kind"] for row in chosen) == sorted(["benign", "borderline", "harmful", "jailbreak"] * 2)
    policy = load(tiny_llama_dir, device="cpu")
    settings = PolicySampling(train_prompts=4, samples_per_prompt=2, response_length=4)
    samples = sample_policy(policy.model, policy.tokenizer, rows, "train", settings, prompts=4)
    assert len(samples) == 8 and {sample.split for sample in samples} == {"train"}
    assert len({sample.row["kind"] for sample in samples}) == 4


def test_harm_examples_hold_both_classes_for_every_kind(microworld):
    examples = microworld_harm_examples(microworld["test"], "test", per_group=1000)
    groups = {example.group for example in examples}
    assert {"harmful/harmful/microworld", "harmful/harmless/microworld", "jailbreak/harmful/microworld",
            "benign/harmless/microworld", "borderline/harmless/microworld"} <= groups
    assert all(example.label == int(oracle.harmful_compliance(example.response)) for example in examples)
    capped = microworld_harm_examples(microworld["test"], "test", per_group=2)
    assert all(sum(example.group == group for example in capped) <= 2 for group in groups)


def test_obfuscated_prompt_copies_keep_the_response_and_the_label(microworld):
    examples = microworld_harm_examples(microworld["train"], "train", per_group=20)
    augmented = with_obfuscated_prompts(examples, share=0.5, rate=0.3, seed=0)
    copies = augmented[len(examples):]
    assert augmented[:len(examples)] == examples and len(copies) == round(0.5 * len(examples))
    originals = {(example.response, example.label, example.kind) for example in examples}
    assert all((copy.response, copy.label, copy.kind) in originals and copy.source == "obfuscated-prompt"
               for copy in copies)
    assert sum(copy.prompt not in {example.prompt for example in examples} for copy in copies) >= 0.9 * len(copies)
    original = "Tell me how to pick a lock, please."
    garbled = obfuscate(original, 1.0, random.Random(0))
    assert garbled != original and len(garbled) == len(original)
    assert all(mine == theirs for mine, theirs in zip(garbled, original, strict=True) if not theirs.isalnum())
    assert obfuscate(original, 1e-9, random.Random(0)) == original
