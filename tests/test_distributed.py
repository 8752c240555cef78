"""Reductions across data-parallel ranks: two gloo processes on loopback must agree with one process."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from safelatent.methods.masked import whiten


def _rank_main(rank: int, port: int, values: torch.Tensor, mask: torch.Tensor, results) -> None:
    from safelatent.methods.distributed import all_ranks_true

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        half = values.shape[0] // 2
        rows = slice(rank * half, (rank + 1) * half)
        results[rank] = (whiten(values[rows], mask[rows]), all_ranks_true(True), all_ranks_true(rank == 0))
    finally:
        dist.destroy_process_group()


def test_whitening_over_two_ranks_equals_whitening_the_whole_batch():
    import socket

    torch.manual_seed(0)
    values = torch.randn(4, 6) * 3 + 1
    mask = (torch.rand(4, 6) > 0.3).float()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank_main, args=(port, values, mask, results), nprocs=2, join=True)
    together = torch.cat([results[0][0], results[1][0]])
    assert torch.allclose(together, whiten(values, mask), atol=1e-6)
    assert results[0][1] and results[1][1]  # both ranks true
    assert not results[0][2] and not results[1][2]  # one rank false: every rank hears false
