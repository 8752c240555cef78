"""KL to the reference policy: per-token estimators, reward shaping and the β controllers (DESIGN 6.1).

With log-ratio d_t = log π_θ(y_t|·) − log π_ref(y_t|·) on the sampled token, the shaped reward is
r_t = −β·kl_t on every response token, plus the judges' sequence reward R(x, y) on the last one.
Estimators of KL(π_θ ‖ π_ref) from samples of π_θ: `k1` = d_t (unbiased, can be negative), `k3` =
exp(−d_t) − 1 + d_t (unbiased, never negative, lower variance). The adaptive controller is the
proportional one of Ziegler et al.: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon).
"""

from typing import Literal

import torch

from safelatent.methods.masked import masked_sum

KLEstimator = Literal["k1", "k3"]


def token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """[batch, seq] per-token estimate of KL(π_θ ‖ π_ref) at the sampled tokens."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                estimator: KLEstimator = "k1") -> torch.Tensor:
    """[batch] KL of each response to the reference, summed over its tokens."""
    return masked_sum(token_kl(logprobs, ref_logprobs, estimator), mask.to(logprobs.dtype), dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[batch] position of each row's last masked-in token (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).amax(dim=1)


def shaped_rewards(sequence_rewards: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                   mask: torch.Tensor, beta: float, estimator: KLEstimator = "k1") -> torch.Tensor:
    """[batch, seq] token rewards: −β·kl_t on the response, plus the sequence reward [batch] at its last token."""
    mask = mask.to(logprobs.dtype)
    rewards = -beta * token_kl(logprobs, ref_logprobs, estimator) * mask
    last = last_token_index(mask)
    has_tokens = mask.sum(dim=1) > 0
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows[has_tokens], last[has_tokens]] += sequence_rewards.to(rewards.dtype)[has_tokens]
    return rewards


class FixedKLController:
    """A constant β."""

    def __init__(self, beta: float):
        if beta < 0:
            raise ValueError(f"KL coefficient beta is {beta}; use beta >= 0")
        self.beta = beta

    def update(self, observed_kl: float, samples: int) -> float:
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController(FixedKLController):
    """β that moves so the observed per-sequence KL approaches `target`; `horizon` samples set the speed."""

    def __init__(self, beta: float, target: float, horizon: int = 10_000):
        super().__init__(beta)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got target={target}, horizon={horizon}")
        self.target = target
        self.horizon = horizon

    def update(self, observed_kl: float, samples: int) -> float:
        error = max(-0.2, min(0.2, observed_kl / self.target - 1.0))
        self.beta *= 1.0 + error * samples / self.horizon
        return self.beta
