"""The harm classifier learns harmful compliance from oracle labels, beats the majority class, saves and loads."""

import pytest

from safelatent.judges.harm_classifier import (
    HarmClassifier,
    HarmClassifierSettings,
    harm_accuracy,
    train_harm_classifier,
)
from safelatent.judges.harm_examples import HarmExample, microworld_harm_examples
from tests.judge_fixtures import one_torch_thread, small_microworld  # noqa: F401  (one_torch_thread is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SETTINGS = HarmClassifierSettings(epochs=3, learning_rate=3e-3, batch_size=16, max_length=128)


@pytest.fixture(scope="module")
def examples():
    """Compliance (payload) and refusals to the same harmful prompts: trivially separable, half of each class."""
    microworld = small_microworld()
    return {split: [example for example in microworld_harm_examples(microworld[split], split, per_group=1000)
                    if example.kind in ("harmful", "jailbreak")] for split in ("train", "test")}


def test_training_separates_compliance_from_refusal(tiny_llama_dir, examples, tmp_path):
    test = examples["test"]
    majority = max(sum(example.label for example in test), sum(1 - example.label for example in test)) / len(test)
    assert majority == 0.5  # a classifier that always says one thing scores 50%

    classifier = train_harm_classifier(tiny_llama_dir, examples["train"], SETTINGS, version="harm-test",
                                       device="cpu", progress=False)
    accuracy = harm_accuracy(classifier, test)
    assert accuracy.n == len(test) and accuracy.value >= 0.95 > majority

    prompts, responses = [example.prompt for example in test], [example.response for example in test]
    probabilities = classifier.predict_proba(prompts, responses)
    assert all(0.0 <= probability <= 1.0 for probability in probabilities)
    first_harmful = next(index for index, example in enumerate(test) if example.label == 1)
    prompt, response, probability = prompts[first_harmful], responses[first_harmful], probabilities[first_harmful]
    assert classifier.is_harmful([prompt], [response]) == [probability >= SETTINGS.threshold]
    assert classifier.is_harmful([prompt], [response], threshold=probability + 1e-4) == [False]

    # The same seed gives the same classifier (BPE-dropout and obfuscation included), so builds are reproducible.
    again = train_harm_classifier(tiny_llama_dir, examples["train"], SETTINGS, version="harm-test", device="cpu",
                                  progress=False)
    assert again.predict_proba(prompts[:8], responses[:8]) == classifier.predict_proba(prompts[:8], responses[:8])

    classifier.save(tmp_path / "harm")
    loaded = HarmClassifier.load(tmp_path / "harm", device="cpu")
    assert loaded.version == "harm-test" and loaded.threshold == SETTINGS.threshold
    assert loaded.predict_proba(prompts[:4], responses[:4]) == pytest.approx(probabilities[:4], abs=1e-5)


def test_harm_classifier_needs_both_classes(tiny_llama_dir):
    only_harmless = [HarmExample("What is 2 plus 3?", "2 + 3 = 5. Answer: 5", 0, "benign", "microworld", "train")]
    with pytest.raises(ValueError, match="both classes"):
        train_harm_classifier(tiny_llama_dir, only_harmless, SETTINGS, version="x")
