import math

import pytest
import torch

from safelatent.methods.kl import AdaptiveKLController, FixedKLController, sequence_kl, shaped_rewards, token_kl
from safelatent.methods.ppo_loss import explained_variance, policy_loss, token_entropy, token_logprobs, value_loss


def test_kl_estimators_agree_on_zero_and_k3_is_never_negative():
    logprobs = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    assert token_kl(logprobs, logprobs).abs().max() == 0
    assert token_kl(logprobs, logprobs, "k3").abs().max() == 0
    ref = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    assert (token_kl(logprobs, ref, "k3") >= 0).all()
    assert token_kl(logprobs, ref, "k1")[0, 1] < 0  # k1 is unbiased but can be negative per token
    with pytest.raises(ValueError, match="k3"):
        token_kl(logprobs, ref, "k2")


def test_k1_and_k3_estimate_the_true_kl_on_samples():
    torch.manual_seed(0)
    policy, reference = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    true_kl = float((policy * (policy / reference).log()).sum())
    samples = torch.multinomial(policy, 200_000, replacement=True)
    logprobs, ref_logprobs = policy.log()[samples], reference.log()[samples]
    for estimator in ("k1", "k3"):
        assert token_kl(logprobs, ref_logprobs, estimator).mean().item() == pytest.approx(true_kl, rel=0.03)


def test_shaped_rewards_put_the_judges_reward_on_the_last_response_token():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-0.5, -9.0, -9.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0, -1.0], [-0.5, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    rewards = shaped_rewards(torch.tensor([5.0, 3.0, 4.0]), logprobs, ref, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 0.0, 5.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert sequence_kl(logprobs, ref, mask).tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_adaptive_controller_moves_beta_towards_the_target_and_clips_the_step():
    controller = AdaptiveKLController(beta=0.1, target=1.0, horizon=100)
    assert controller.update(observed_kl=2.0, samples=10) == pytest.approx(0.1 * 1.02)
    controller.load_state_dict({"beta": 0.1})
    assert controller.update(observed_kl=0.5, samples=10) == pytest.approx(0.1 * 0.98)
    controller.load_state_dict({"beta": 0.1})
    assert controller.update(observed_kl=100.0, samples=100) == pytest.approx(0.1 * 1.2)
    assert FixedKLController(0.3).update(observed_kl=50.0, samples=64) == 0.3
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(beta=0.1, target=0.0)


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    advantages = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = policy_loss(logprobs, logprobs.clone(), advantages, mask)
    assert loss.item() == pytest.approx(-2.0)
    assert stats["approx_kl"].item() == 0 and stats["clipfrac"].item() == 0


def test_policy_loss_stops_pushing_once_the_ratio_leaves_the_trust_region():
    old = torch.zeros(1, 2)
    logprobs = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, stats = policy_loss(logprobs, old, torch.ones(1, 2), torch.ones(1, 2), clip_eps=0.2)
    loss.backward()
    assert logprobs.grad[0, 0] == 0  # ratio 1.5 > 1.2 with a positive advantage: clipped, no gradient
    assert logprobs.grad[0, 1] < 0  # inside the region: the loss still raises this token's probability
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_value_loss_is_pessimistic_about_large_value_moves():
    returns, old = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    loss, stats = value_loss(torch.tensor([[0.9]]), old, returns, torch.ones(1, 1), clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8 ** 2)  # the clipped estimate (0.2) is the larger error
    assert stats["value_clipfrac"].item() == 1
    unclipped, _ = value_loss(torch.tensor([[0.9]]), old, returns, torch.ones(1, 1), clip_range=None)
    assert unclipped.item() == pytest.approx(0.5 * 0.1 ** 2)


def test_explained_variance_is_one_for_a_perfect_critic_and_zero_for_the_mean():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.5), returns, mask).item() == pytest.approx(0.0)


def test_token_logprobs_and_entropy_of_a_uniform_distribution():
    logits = torch.zeros(2, 3, 4)
    tokens = torch.tensor([[0, 1, 2], [3, 3, 3]])
    torch.testing.assert_close(token_logprobs(logits, tokens), torch.full((2, 3), math.log(0.25)))
    torch.testing.assert_close(token_entropy(logits), torch.full((2, 3), math.log(4)))
