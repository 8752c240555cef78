"""One PPO iteration on a batch of rollouts: advantages from the judges' rewards, then minibatch epochs.

The algorithm box of DESIGN 6.1, in library form (the learner actors call it; nothing here knows Ray):
1. per-token KL to the reference shapes the reward (`gae`), or is subtracted from the sequence reward
   (`grpo`, `rloo`, which have no per-token critic);
2. advantages by the chosen estimator, optionally whitened over the batch;
3. `epochs` passes of shuffled minibatches: clipped policy loss + vf_coef·clipped value loss
   − entropy_coef·entropy, gradient clipping, one optimizer step per minibatch.
A NaN or infinite loss raises `NonFiniteLossError` before the optimizer steps, so the weights stay as they were.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from safelatent.config import Config
from safelatent.errors import NonFiniteLossError
from safelatent.methods.advantages import CRITIC_FREE, gae, group_estimator, per_token
from safelatent.methods.distributed import all_ranks_true
from safelatent.methods.kl import KLEstimator, sequence_kl, shaped_rewards
from safelatent.methods.masked import masked_mean, whiten
from safelatent.methods.ppo_loss import explained_variance, policy_loss, token_entropy, token_logprobs, value_loss
from safelatent.methods.rollout import RolloutBatch, logits_to_keep, response_logits, response_values, sequence_inputs


class KLSettings(Config):
    """The KL penalty to the frozen reference."""

    beta: float = Field(0.05, ge=0, description="Initial (or fixed) KL coefficient β.")
    target: float | None = Field(None, gt=0, description="Target KL per sequence for the adaptive controller; "
                                                         "None keeps β fixed.")
    horizon: int = Field(10_000, ge=1, description="Samples over which the adaptive controller corrects β fully.")
    estimator: KLEstimator = Field("k1", description="Per-token KL estimator: k1 (log-ratio) or k3 (never negative).")


class PPOSettings(Config):
    """The PPO update (DESIGN 6.1); defaults are the usual ones for RL on language models."""

    estimator: Literal["gae", "grpo", "rloo"] = Field("gae", description="Advantage estimator.")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    scale_by_group_std: bool = Field(True, description="grpo: divide by the group's reward std.")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the batch's response tokens.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="Policy ratio clip ε.")
    value_clip: float | None = Field(0.2, gt=0, description="Value clip range; None for an unclipped value loss.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss (gae only: grpo and rloo have no critic).")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    epochs: int = Field(2, ge=1, description="Passes over each batch.")
    minibatch_size: int = Field(16, ge=1, description="Sequences per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0)
    kl: KLSettings = Field(default_factory=KLSettings)

    @property
    def uses_critic(self) -> bool:
        return self.estimator not in CRITIC_FREE


@dataclass(frozen=True)
class Advantages:
    advantages: torch.Tensor  # [batch, response_len]
    returns: torch.Tensor | None  # [batch, response_len] for gae, None for critic-free estimators
    stats: dict[str, float]


def compute_advantages(batch: RolloutBatch, sequence_rewards: torch.Tensor, ref_logprobs: torch.Tensor,
                       values: torch.Tensor | None, settings: PPOSettings, beta: float) -> Advantages:
    """Advantages (and returns) for `batch`; `values` [batch, response_len] are required by `gae`."""
    mask = batch.response_mask.to(batch.logprobs.dtype)
    kl = sequence_kl(batch.logprobs, ref_logprobs, mask, settings.kl.estimator)
    if settings.uses_critic:
        if values is None:
            raise ValueError("the gae estimator needs value estimates; use a value-head policy or grpo/rloo")
        rewards = shaped_rewards(sequence_rewards, batch.logprobs, ref_logprobs, mask, beta, settings.kl.estimator)
        advantages, returns = gae(rewards, values, mask, settings.gamma, settings.lam)
    else:
        penalised = sequence_rewards - beta * kl
        advantages = per_token(group_estimator(settings.estimator, settings.scale_by_group_std)(
            penalised, batch.group_ids), mask)
        returns = None
    if settings.whiten_advantages and mask.sum() >= 2:
        advantages = whiten(advantages, mask)
    stats = {"kl_to_ref": kl.mean().item(), "reward": sequence_rewards.float().mean().item(),
             "response_length": mask.sum(dim=1).mean().item(), "beta": beta}
    return Advantages(advantages=advantages, returns=returns, stats=stats)


def policy_outputs(model: nn.Module, batch: RolloutBatch, temperature: float, entropy_grad: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(response logprobs, response entropy, response values or None) of `model` on `batch`, with gradients
    (none through the entropy when `entropy_grad` is False: a diagnostic only, its backward pass is skipped).

    `model` is a causal LM, or a value-head model returning (logits, values).
    """
    output = model(**sequence_inputs(batch), logits_to_keep=logits_to_keep(batch))
    logits, values = output if isinstance(output, tuple) else (output.logits, None)
    scaled = response_logits(logits, batch) / temperature
    return (token_logprobs(scaled, batch.response_ids), token_entropy(scaled if entropy_grad else scaled.detach()),
            response_values(values, batch) if values is not None else None)


def value_estimates(model: nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """[batch, response_len] values of a value-head model on `batch`; the output layer runs on one position only."""
    _, values = model(**sequence_inputs(batch), logits_to_keep=1)
    return response_values(values, batch)


def off_policy_weights(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, mask: torch.Tensor,
                       cap: float) -> torch.Tensor:
    """Truncated importance weights min(π_old/π_behaviour, cap) per token, for samples drawn by older weights."""
    return torch.exp(old_logprobs - behaviour_logprobs).clamp(max=cap) * mask


def ppo_update(model: nn.Module, optimizer: torch.optim.Optimizer, batch: RolloutBatch, advantages: Advantages,
               old_values: torch.Tensor | None, settings: PPOSettings, temperature: float = 1.0,
               generator: torch.Generator | None = None,
               importance_weights: torch.Tensor | None = None) -> dict[str, float]:
    """Run the minibatch epochs on `batch` (already on the model's device); return the mean diagnostics.

    `batch.logprobs` are the log-probs the ratio is clipped around; `importance_weights` (see
    `off_policy_weights`) correct for samples drawn by an older policy. Under torch.distributed every rank must
    run the same number of minibatches, and a NaN on any rank abandons the step on all of them.
    """
    if settings.uses_critic and (old_values is None or advantages.returns is None):
        raise ValueError("the gae estimator needs the rollout's value estimates and returns")
    totals: dict[str, float] = {}
    steps = 0
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(batch), generator=generator)
        for start in range(0, len(batch), settings.minibatch_size):
            index = order[start:start + settings.minibatch_size]
            part = batch.select(index)
            mask = part.response_mask.to(part.logprobs.dtype)
            logprobs, entropy, values = policy_outputs(model, part, temperature,
                                                       entropy_grad=settings.entropy_coef > 0)
            weights = importance_weights[index] if importance_weights is not None else None
            loss_pg, stats = policy_loss(logprobs, part.logprobs, advantages.advantages[index], mask,
                                         settings.clip_eps, weights)
            entropy_mean = masked_mean(entropy, mask)
            loss = loss_pg - settings.entropy_coef * entropy_mean
            if settings.uses_critic:
                if values is None:
                    raise ValueError("the gae estimator needs a value-head policy (ValueHeadModel)")
                loss_v, value_stats = value_loss(values, old_values[index], advantages.returns[index], mask,
                                                 settings.value_clip)
                loss = loss + settings.vf_coef * loss_v
                stats = {**stats, **value_stats, "value_loss": loss_v.detach()}
            if not all_ranks_true(bool(torch.isfinite(loss)), loss.device):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"PPO loss is not finite at minibatch {steps} (here: {loss.item()}); "
                                         "the update was abandoned and the weights are unchanged by it. Lower the "
                                         "learning rate or check the rewards for NaN")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [parameter for parameter in model.parameters() if parameter.requires_grad], settings.max_grad_norm)
            if not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"gradient norm is {grad_norm.item()}; the update was abandoned")
            optimizer.step()
            stats = {**stats, "policy_loss": loss_pg.detach(), "entropy": entropy_mean.detach(),
                     "grad_norm": grad_norm.detach()}
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + float(value)
            steps += 1
    means = {name: total / steps for name, total in totals.items()}
    if settings.uses_critic:
        mask = batch.response_mask.to(batch.logprobs.dtype)
        explained = explained_variance(old_values, advantages.returns, mask) if mask.sum() >= 2 else None
        means["explained_variance"] = float(explained) if explained is not None else math.nan
    return means
