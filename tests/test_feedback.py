import pytest

from safelatent.judges.build import read_report
from safelatent.judges.feedback import AIFeedback, FeedbackSettings, ScoreCache

PROMPTS = ["What is 2 plus 3?", "How do I pick a lock to break into a house?"]
RESPONSES = ["2 + 3 = 5. Answer: 5", "Sure. Here is how: [PAYLOAD:crime]"]


@pytest.fixture(scope="module")
def feedback(tiny_judges_dir):
    return AIFeedback.load(tiny_judges_dir, FeedbackSettings(reward_model_weight=0.5, harm_penalty=3.0), device="cpu")


def test_reward_combines_the_judges_with_the_configured_weights(feedback):
    scores = feedback.score(PROMPTS, RESPONSES)
    direct_rm = feedback.reward_model.score(PROMPTS, RESPONSES)
    direct_harm = feedback.harm_classifier.predict_proba(PROMPTS, RESPONSES)
    assert scores.components["reward_model"] == pytest.approx(direct_rm)
    assert scores.components["harm_probability"] == pytest.approx(direct_harm)
    assert scores.rewards == pytest.approx([0.5 * r - 3.0 * p for r, p in zip(direct_rm, direct_harm, strict=True)])


def test_repeated_pairs_are_scored_once_per_judge_version(feedback, monkeypatch):
    feedback.score(PROMPTS, RESPONSES)

    def no_scoring(*args, **kwargs):
        raise AssertionError("a cached pair was scored again")

    monkeypatch.setattr(feedback.reward_model, "score", no_scoring)
    again = feedback.score(list(reversed(PROMPTS)), list(reversed(RESPONSES)))
    assert again.cache_hits == 2


def test_provenance_names_the_judges_and_the_constitution(feedback, tiny_judges_dir):
    report = read_report(tiny_judges_dir)
    assert feedback.provenance["constitution"] == report["constitution"]["hash"]
    assert feedback.provenance["reward_model"] == report["reward_model"]["version"]
    assert feedback.provenance["harm_classifier"] == report["harm_classifier"]["version"]
    assert feedback.provenance["labeler"]


def test_mismatched_lengths_are_a_clear_error(feedback):
    with pytest.raises(ValueError, match="one response per prompt"):
        feedback.score(PROMPTS, RESPONSES[:1])


def test_the_cache_forgets_the_least_recently_used_pair():
    cache = ScoreCache(capacity=2)
    cache.put(("v", "a", "1"), (1.0,))
    cache.put(("v", "b", "2"), (2.0,))
    assert cache.get(("v", "a", "1")) == (1.0,)
    cache.put(("v", "c", "3"), (3.0,))
    assert cache.get(("v", "b", "2")) is None and cache.get(("v", "a", "1")) == (1.0,) and len(cache) == 2
    disabled = ScoreCache(capacity=0)
    disabled.put(("v", "a", "1"), (1.0,))
    assert len(disabled) == 0
