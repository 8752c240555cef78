import math

import pytest
import torch

from safelatent.errors import NonFiniteLossError
from safelatent.methods.ppo import PPOSettings, compute_advantages, policy_outputs, ppo_update
from safelatent.methods.rollout import sample, score_tokens, sequence_inputs
from safelatent.models.loading import load
from safelatent.models.value_head import ValueHeadModel

PROMPTS = ["What is 2 plus 3?", "Spell cat.", "Hi there", "Name a capital."]


def rewarded_share(batch):
    """Reward 1 when the reply opens with an even token id: about half the samples at first, learnable in steps."""
    return (batch.response_ids[:, 0] % 2 == 0).float()


def expected_reward(model, tokenizer):
    """The exact mean reward over the prompts: the probability mass on even ids for the reply's first token."""
    batch = sample(model, tokenizer, PROMPTS, max_new_tokens=1, seed=0)
    with torch.no_grad():
        logits = model(**sequence_inputs(batch)).logits[:, batch.prompt_ids.shape[1] - 1]
    return torch.softmax(logits, -1)[:, ::2].sum(-1).mean().item()


def train(model_dir, estimator, iterations=8):
    torch.manual_seed(0)
    loaded = load(model_dir, device="cpu")
    reference = load(model_dir, device="cpu").model.eval()
    policy = ValueHeadModel(loaded.model)
    settings = PPOSettings(estimator=estimator, epochs=2, minibatch_size=8, kl={"beta": 0.01})
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    history = []
    for iteration in range(iterations):
        policy.eval()
        batch = sample(loaded.model, loaded.tokenizer, PROMPTS, samples_per_prompt=8, max_new_tokens=4,
                       seed=iteration)
        rewards = rewarded_share(batch)
        history.append(expected_reward(loaded.model, loaded.tokenizer))
        ref_logprobs = score_tokens(reference, batch)
        with torch.no_grad():
            _, _, values = policy_outputs(policy, batch, 1.0)
        advantages = compute_advantages(batch, rewards, ref_logprobs, values, settings, settings.kl.beta)
        stats = ppo_update(policy, optimizer, batch, advantages, values, settings)
    return history, stats


@pytest.mark.parametrize("estimator", ["gae", "grpo", "rloo"])
def test_ppo_learns_to_emit_the_rewarded_token(tiny_llama_dir, estimator):
    history, stats = train(tiny_llama_dir, estimator)
    assert history[-1] > history[0] + 0.08, history  # the exact expected reward, not a sampled estimate
    for name in ("approx_kl", "clipfrac", "entropy", "policy_loss", "grad_norm"):
        assert math.isfinite(stats[name]), (name, stats)
    assert ("explained_variance" in stats) == (estimator == "gae")


def test_a_nan_reward_stops_the_step_without_touching_the_weights(tiny_llama_dir):
    loaded = load(tiny_llama_dir, device="cpu")
    policy = ValueHeadModel(loaded.model)
    settings = PPOSettings(estimator="grpo", whiten_advantages=False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    batch = sample(loaded.model, loaded.tokenizer, PROMPTS, samples_per_prompt=2, max_new_tokens=4, seed=0)
    rewards = torch.zeros(len(batch))
    rewards[0] = float("nan")
    advantages = compute_advantages(batch, rewards, batch.logprobs, None, settings, 0.0)
    before = [parameter.detach().clone() for parameter in policy.parameters()]
    with pytest.raises(NonFiniteLossError, match="unchanged"):
        ppo_update(policy, optimizer, batch, advantages, None, settings)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_unscaled_group_advantages_leave_replies_that_score_alike_alone(tiny_llama_dir):
    """SLS-RLAIF's estimator (docs/sls.md): A = R − mean of the prompt's samples, neither scaled nor whitened, so
    the samples of a prompt that all score the same get no push at all, and the others move by reward units."""
    loaded = load(tiny_llama_dir, device="cpu")
    batch = sample(loaded.model, loaded.tokenizer, PROMPTS[:2], samples_per_prompt=2, max_new_tokens=4, seed=0)
    first = batch.group_ids == batch.group_ids[0]
    rewards = torch.where(first, torch.tensor(1.5), torch.arange(len(batch), dtype=torch.float32))
    settings = PPOSettings(estimator="grpo", scale_by_group_std=False, whiten_advantages=False)
    advantages = compute_advantages(batch, rewards, batch.logprobs, None, settings, 1.0).advantages
    mask = batch.response_mask.bool()
    assert torch.equal(advantages[first], torch.zeros_like(advantages[first]))
    others = rewards[~first] - rewards[~first].mean()
    assert torch.allclose(advantages[~first][mask[~first]],
                          others[:, None].expand_as(advantages[~first])[mask[~first]])
    scaled = compute_advantages(batch, rewards, batch.logprobs, None, PPOSettings(estimator="grpo"), 1.0)
    assert scaled.advantages[~first][mask[~first]].abs().max() > others.abs().max()  # whitening rescales them


def test_gae_without_values_is_a_clear_error(tiny_llama_dir):
    loaded = load(tiny_llama_dir, device="cpu")
    batch = sample(loaded.model, loaded.tokenizer, PROMPTS[:1], max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="value"):
        compute_advantages(batch, torch.ones(1), batch.logprobs, None, PPOSettings(), 0.1)


def test_off_policy_weights_are_truncated_ratios_on_response_tokens():
    from safelatent.methods.ppo import off_policy_weights

    old = torch.log(torch.tensor([[0.5, 0.9, 0.2]]))
    behaviour = torch.log(torch.tensor([[0.5, 0.3, 0.4]]))
    weights = off_policy_weights(old, behaviour, torch.tensor([[1.0, 1.0, 0.0]]), cap=2.0)
    assert torch.allclose(weights, torch.tensor([[1.0, 2.0, 0.0]]))


def test_unit_importance_weights_change_nothing():
    from safelatent.methods.ppo_loss import policy_loss

    torch.manual_seed(0)
    logprobs, old, advantages = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.ones(3, 5)
    plain, _ = policy_loss(logprobs, old, advantages, mask)
    weighted, _ = policy_loss(logprobs, old, advantages, mask, importance_weights=torch.ones(3, 5))
    halved, _ = policy_loss(logprobs, old, advantages, mask, importance_weights=torch.full((3, 5), 0.5))
    assert torch.equal(plain, weighted) and torch.allclose(halved, plain / 2)


def test_a_learner_resumed_with_another_learning_rate_uses_it_and_keeps_the_moments(tiny_llama_dir):
    """A PBT perturbation (or a resume with lr changed) must take effect, not be undone by the checkpoint."""
    from safelatent.methods.learner import OptimizerSettings, PPOLearner

    settings = PPOSettings(estimator="grpo")
    first = PPOLearner(load(tiny_llama_dir, device="cpu").model, settings, OptimizerSettings(learning_rate=1e-3))
    loss = sum(parameter.sum() for parameter in first.module.parameters() if parameter.requires_grad)
    loss.backward()
    first.optimizer.step()
    state = first.state_dict()
    second = PPOLearner(load(tiny_llama_dir, device="cpu").model, settings, OptimizerSettings(learning_rate=5e-4))
    second.load_state_dict(state)
    assert [group["lr"] for group in second.optimizer.param_groups] == [5e-4]
    moments = next(iter(second.optimizer.state.values()))
    assert int(moments["step"]) == 1 and moments["exp_avg"].abs().sum() > 0


def test_without_an_entropy_bonus_the_entropy_is_a_diagnostic_outside_the_backward_pass(tiny_llama_dir):
    loaded = load(tiny_llama_dir, device="cpu")
    batch = sample(loaded.model, loaded.tokenizer, PROMPTS, samples_per_prompt=2, max_new_tokens=4, seed=0)
    logprobs, entropy, _ = policy_outputs(loaded.model, batch, 1.0)
    detached_logprobs, detached_entropy, _ = policy_outputs(loaded.model, batch, 1.0, entropy_grad=False)
    assert entropy.requires_grad and not detached_entropy.requires_grad and detached_logprobs.requires_grad
    assert torch.equal(entropy.detach(), detached_entropy) and torch.equal(logprobs, detached_logprobs)
