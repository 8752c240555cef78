import pytest
import torch

from safelatent.methods.advantages import gae, group_estimator, grpo, per_token, rloo
from safelatent.methods.masked import masked_mean, masked_var, whiten


def naive_gae(rewards, values, gamma, lam):
    """One unpadded response, written the textbook way."""
    advantages, running = [], 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages.append(running)
    return advantages[::-1]


def test_gae_matches_the_textbook_recursion_on_a_padded_batch():
    torch.manual_seed(0)
    lengths = [5, 3, 1]
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.zeros(3, 6)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for row, length in enumerate(lengths):
        expected = naive_gae(rewards[row, :length].tolist(), values[row, :length].tolist(), 0.9, 0.8)
        assert advantages[row, :length].tolist() == pytest.approx(expected, abs=1e-5)
        assert returns[row, :length].tolist() == pytest.approx(
            [a + v for a, v in zip(expected, values[row, :length].tolist(), strict=True)], abs=1e-5)
    assert advantages[mask == 0].abs().max() == 0 and returns[mask == 0].abs().max() == 0


def test_gae_with_lambda_one_and_no_critic_is_the_reward_to_go():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the 7 sits on padding and must not count
    advantages, _ = gae(rewards, torch.zeros(1, 4), mask, gamma=1.0, lam=1.0)
    assert advantages.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_grpo_centres_and_scales_within_each_group():
    rewards = torch.tensor([1.0, 10.0, 2.0, 20.0, 3.0, 5.0])
    groups = torch.tensor([0, 1, 0, 1, 0, 2])  # interleaved groups; group 2 has one member
    advantages = grpo(rewards, groups, eps=0.0)
    assert advantages[[0, 2, 4]].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert advantages[[1, 3]].tolist() == pytest.approx([-0.7071, 0.7071], abs=1e-4)
    assert advantages[5] == 0
    assert grpo(rewards, groups, scale_by_std=False)[[0, 2, 4]].tolist() == pytest.approx([-1.0, 0.0, 1.0])


def test_rloo_subtracts_the_mean_of_the_other_samples():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    advantages = rloo(rewards, torch.tensor([0, 0, 0, 1]))
    assert advantages.tolist() == pytest.approx([-1.5, 0.0, 1.5, 0.0])
    assert group_estimator("rloo")(rewards, torch.tensor([0, 0, 0, 1])).tolist() == advantages.tolist()


def test_unknown_group_estimator_names_the_choices():
    with pytest.raises(ValueError, match="grpo"):
        group_estimator("gae")


def test_per_token_broadcasts_over_the_response_only():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert per_token(torch.tensor([2.0, -1.0]), mask).tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def test_whiten_gives_zero_mean_unit_variance_on_the_mask():
    torch.manual_seed(1)
    values = torch.randn(4, 7) * 5 + 3
    mask = (torch.rand(4, 7) > 0.3).float()
    white = whiten(values, mask)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert masked_var(white, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert white[mask == 0].abs().max() == 0
    kept = whiten(values, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(values, mask).item(), rel=1e-5)


def test_variance_of_fewer_than_two_tokens_is_an_error():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.ones(1, 3), torch.tensor([[1, 0, 0]]))
