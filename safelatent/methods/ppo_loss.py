"""PPO's losses and diagnostics on response tokens (DESIGN 6.1); tensors are [batch, seq] with a mask.

Policy: L = −mean_t min(ρ_t·A_t, clip(ρ_t, 1−ε, 1+ε)·A_t), ρ_t = exp(log π_θ − log π_old).
Value: L = ½·mean_t max((V − G)², (V_old + clip(V − V_old, ±ε_v) − G)²).
Diagnostics: approx_kl = mean ½(log ρ)² (Schulman's low-variance estimator), clipfrac = share of tokens
whose ratio was clipped, explained variance of the returns by the values, entropy of the policy.
"""

import torch
import torch.nn.functional as F

from safelatent.methods.masked import masked_mean, masked_var


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, seq] log-probability of each token under logits [batch, seq, vocab] (same positions)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[batch, seq] entropy of each next-token distribution."""
    logits = logits.float()
    log_probs = F.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float = 0.2, importance_weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss and its diagnostics (approx_kl, clipfrac, ratio_mean).

    `importance_weights` [batch, seq] multiply each token's surrogate: off-policy samples are corrected by
    w_t = π_old/π_behaviour while the ratio is clipped around π_old (decoupled PPO).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    surrogate = -torch.minimum(unclipped, clipped)
    if importance_weights is not None:
        surrogate = surrogate * importance_weights
    loss = masked_mean(surrogate, mask)
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_eps).to(logprobs.dtype), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (unclipped when `clip_range` is None) and the share of clipped tokens."""
    error = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * masked_mean(error, mask), {"value_clipfrac": torch.zeros((), device=values.device)}
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > error).to(values.dtype), mask)
    return loss, {"value_clipfrac": clipfrac}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(G − V) / Var(G) over the mask: 1 is a perfect critic, 0 no better than a constant."""
    variance = masked_var(returns, mask)
    if variance <= 0:
        return torch.full((), float("nan"), device=values.device)
    return 1.0 - masked_var(returns - values, mask) / variance
