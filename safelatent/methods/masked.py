"""Reductions over the response tokens of a padded batch: every tensor is [batch, seq] with a 0/1 mask."""

import torch

from safelatent.methods.distributed import all_reduce_sum


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the masked-in entries; 0 where there are none (an empty response contributes nothing)."""
    mask = mask.to(values.dtype)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked-in entries."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    if count < 2:
        raise ValueError(f"variance needs at least 2 masked-in entries, got {int(count.item())}")
    centred = (values - masked_mean(values, mask)) * mask
    return (centred ** 2).sum() / (count - 1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale to unit variance over the mask (and centre unless `shift_mean` is False); zero outside it.

    Under torch.distributed the mean and variance are those of the masked entries of every rank together.
    """
    mask = mask.to(values.dtype)
    totals = all_reduce_sum(torch.stack([masked_sum(values, mask), mask.sum()]))
    count = totals[1]
    if count < 2:
        raise ValueError(f"variance needs at least 2 masked-in entries, got {int(count.item())}")
    mean = totals[0] / count
    squares = all_reduce_sum(masked_sum((values - mean) ** 2, mask))
    scaled = (values - mean) * torch.rsqrt(squares / (count - 1) + eps)
    if not shift_mean:
        scaled = scaled + mean
    return scaled * mask
