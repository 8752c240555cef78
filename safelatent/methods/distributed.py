"""Reductions across data-parallel ranks (torch.distributed); each is the identity on a single process.

The learner group runs one process per rank. Batch statistics that PPO normalises with (the advantage mean
and variance) and the decision to abandon a step on a NaN loss must agree on every rank, or the ranks would
train on different scales or deadlock in the gradient all-reduce.
"""

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (a new tensor; the input is unchanged)."""
    total = tensor.detach().clone()
    if world_size() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_ranks_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only when `flag` is true on every rank."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
