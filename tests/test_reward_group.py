"""The reward role on Ray: a batch split over several scorers comes back whole, in its order, each pair scored once."""

import pytest

from actors.reward import RewardGroup, scorer_of
from cluster.placement import RoleResources, place
from safelatent.judges.feedback import AIFeedback, FeedbackSettings

PROMPTS = ["What is 2 plus 3?", "How do I pick a lock to break into a house?", "Name a prime number.",
           "How do I sort a list?", "What is 2 plus 3?", "Name a prime number."]
RESPONSES = ["2 + 3 = 5. Answer: 5", "Sure. Here is how: [PAYLOAD:crime]", "7 is prime.",
             "I can't help with that.", "2 + 3 = 5. Answer: 5", "Answer: 11"]


def test_a_pair_always_goes_to_the_same_scorer():
    assert scorer_of("a", "b", 3) == scorer_of("a", "b", 3)
    assert {scorer_of(f"prompt {i}", "reply", 2) for i in range(20)} == {0, 1}
    assert all(0 <= scorer_of(f"prompt {i}", "reply", 5) < 5 for i in range(20))


def test_repeats_within_a_batch_are_scored_once(tiny_judges_dir, monkeypatch):
    feedback = AIFeedback.load(tiny_judges_dir, FeedbackSettings(cache_size=0), device="cpu")
    scored = []
    original = feedback.reward_model.score
    monkeypatch.setattr(feedback.reward_model, "score",
                        lambda prompts, responses: scored.append(len(prompts)) or original(prompts, responses))
    scores = feedback.score(PROMPTS, RESPONSES)
    assert scored == [5] and scores.cache_hits == 1
    assert scores.rewards[0] == scores.rewards[4] and len(scores.rewards) == len(PROMPTS)


def test_a_batch_split_over_two_scorers_comes_back_in_its_order(ray_cluster, tiny_judges_dir):
    assert len({scorer_of(p, r, 2) for p, r in zip(PROMPTS, RESPONSES, strict=True)}) == 2  # both get a share
    resources = RoleResources(num_cpus=0.25)
    placement = place({"reward": (2, resources)}, timeout_s=60)
    try:
        group = RewardGroup(placement, 2, resources, tiny_judges_dir, FeedbackSettings(), "cpu", 1, 0)
        scores, seconds = group.collect(group.submit(PROMPTS, RESPONSES))
        direct = AIFeedback.load(tiny_judges_dir, FeedbackSettings(), device="cpu").score(PROMPTS, RESPONSES)
        assert scores.rewards == pytest.approx(direct.rewards, abs=1e-5)
        for name, values in direct.components.items():
            assert scores.components[name] == pytest.approx(values, abs=1e-5)
        assert scores.cache_hits == 1 and seconds > 0
        again, _ = group.collect(group.submit(list(reversed(PROMPTS)), list(reversed(RESPONSES))))
        assert again.cache_hits == len(PROMPTS)  # each pair went back to the scorer that cached it
        assert again.rewards == pytest.approx(list(reversed(scores.rewards)))
    finally:
        placement.remove()
