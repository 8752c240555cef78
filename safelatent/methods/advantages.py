"""Advantage estimators, selectable by name: `gae` (with a value head), `grpo` and `rloo` (critic-free).

Tensors are response-aligned: [batch, seq] holds the response tokens from position 0, right-padded,
with `mask` 1 on the tokens that exist.

- gae: δ_t = r_t + γ·V_{t+1} − V_t, A_t = Σ_k (γλ)^k δ_{t+k} within the response; returns = A + V.
- grpo: several responses share a prompt (same group id); A = (R − mean_group R) / (std_group R + ε),
  or without the division when `scale_by_std` is False.
- rloo: A = R − mean of the *other* responses of the group (leave-one-out).
The critic-free advantages are per sequence and apply to every token of the response.
"""

from collections.abc import Callable
from typing import Literal

import torch

EstimatorName = Literal["gae", "grpo", "rloo"]
ESTIMATORS: tuple[str, ...] = ("gae", "grpo", "rloo")
CRITIC_FREE: frozenset[str] = frozenset({"grpo", "rloo"})


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [batch, seq] and zero outside the mask."""
    mask = mask.to(values.dtype)
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (token_rewards * mask) + gamma * next_values - values
    next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in range(values.shape[1] - 1, -1, -1):
        running = deltas[:, t] + gamma * lam * next_mask[:, t] * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: (group size, group sum, group sum of squares)."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    groups = int(inverse.max().item()) + 1
    ones = torch.ones_like(rewards)
    size = torch.zeros(groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, inverse, ones)
    total = torch.zeros_like(size).index_add_(0, inverse, rewards)
    squares = torch.zeros_like(size).index_add_(0, inverse, rewards ** 2)
    return size[inverse], total[inverse], squares[inverse]


def grpo(sequence_rewards: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = True,
         eps: float = 1e-6) -> torch.Tensor:
    """[batch] group-relative advantages; a group of one gets 0."""
    size, total, squares = _group_stats(sequence_rewards, group_ids)
    mean = total / size
    centred = sequence_rewards - mean
    if not scale_by_std:
        return centred
    variance = ((squares - size * mean ** 2) / (size - 1).clamp(min=1)).clamp(min=0)
    return torch.where(size > 1, centred / (variance.sqrt() + eps), torch.zeros_like(centred))


def rloo(sequence_rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """[batch] leave-one-out advantages; a group of one gets 0."""
    size, total, _ = _group_stats(sequence_rewards, group_ids)
    others = (total - sequence_rewards) / (size - 1).clamp(min=1)
    return torch.where(size > 1, sequence_rewards - others, torch.zeros_like(sequence_rewards))


def per_token(sequence_advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast [batch] advantages to the [batch, seq] response tokens."""
    return sequence_advantages[:, None] * mask.to(sequence_advantages.dtype)


GroupEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def group_estimator(name: str, scale_by_std: bool = True) -> GroupEstimator:
    """The critic-free estimator called `name`, as f(sequence_rewards, group_ids) -> [batch]."""
    if name == "grpo":
        return lambda rewards, groups: grpo(rewards, groups, scale_by_std=scale_by_std)
    if name == "rloo":
        return rloo
    raise ValueError(f"{name!r} is not a critic-free estimator; use one of {sorted(CRITIC_FREE)}")
