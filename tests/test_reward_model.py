"""The Bradley–Terry reward model learns the order its pairs teach, scores consistently, and saves and loads."""

import dataclasses

import pytest

from safelatent.judges.preferences import microworld_pairs
from safelatent.judges.reward_model import (
    RewardModel,
    RewardModelSettings,
    pairwise_accuracy,
    pairwise_wins,
    train_reward_model,
)
from safelatent.judges.sequence_classifier import classifier_from_backbone
from tests.judge_fixtures import one_torch_thread, small_microworld  # noqa: F401  (one_torch_thread is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SETTINGS = RewardModelSettings(epochs=2, learning_rate=3e-3, batch_size=8, max_length=128)


@pytest.fixture(scope="module")
def refusal_pairs():
    """Refusal ≻ compliance (payload) pairs: trivially separable, so a working trainer must get them right."""
    microworld = small_microworld()
    return {split: [pair for pair in microworld_pairs(microworld[split], split, per_group=1000)
                    if pair.recipe == "harmless-vs-compliance"] for split in ("train", "test")}


def test_training_learns_the_labeled_order_on_held_out_pairs(tiny_llama_dir, refusal_pairs, tmp_path):
    model, tokenizer = classifier_from_backbone(tiny_llama_dir, num_labels=1, device="cpu")
    untrained = pairwise_accuracy(RewardModel(model, tokenizer, version="untrained"), refusal_pairs["test"])
    trained = train_reward_model(tiny_llama_dir, refusal_pairs["train"], SETTINGS, version="rm-test",
                                 device="cpu", progress=False)
    accuracy = pairwise_accuracy(trained, refusal_pairs["test"])
    assert accuracy.n == len(refusal_pairs["test"]) >= 20
    assert accuracy.value >= 0.95 and accuracy.value > untrained.value

    # The order comes from the labels, not from the data's shape: swapped labels teach the opposite order.
    swapped = [dataclasses.replace(pair, chosen=pair.rejected, rejected=pair.chosen) for pair in refusal_pairs["train"]]
    backwards = train_reward_model(tiny_llama_dir, swapped, SETTINGS, version="rm-swapped", device="cpu",
                                   progress=False)
    assert pairwise_accuracy(backwards, refusal_pairs["test"]).value <= 0.05

    # Saved and loaded, it gives the same scores, batched or alone.
    trained.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm", device="cpu")
    assert loaded.version == "rm-test" and loaded.max_length == SETTINGS.max_length
    prompts = [pair.prompt for pair in refusal_pairs["test"][:5]]
    responses = [pair.chosen for pair in refusal_pairs["test"][:5]]
    batched = loaded.score(prompts, responses)
    assert batched == pytest.approx(trained.score(prompts, responses), abs=1e-5)
    assert [loaded.score([prompt], [response])[0] for prompt, response in zip(prompts, responses, strict=True)] == (
        pytest.approx(batched, abs=1e-5))
    assert pairwise_wins(loaded, refusal_pairs["test"][:3]) == [True, True, True]


def test_reward_model_refuses_wrong_inputs(tiny_llama_dir, tmp_path):
    model, tokenizer = classifier_from_backbone(tiny_llama_dir, num_labels=2, device="cpu")
    with pytest.raises(ValueError, match="one output"):
        RewardModel(model, tokenizer, version="x")
    with pytest.raises(ValueError, match="no preference pairs"):
        train_reward_model(tiny_llama_dir, [], SETTINGS, version="x")
    with pytest.raises(FileNotFoundError, match="not a saved judge"):
        RewardModel.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        classifier_from_backbone(tmp_path, num_labels=1)
