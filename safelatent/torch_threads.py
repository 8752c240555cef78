"""torch's CPU thread count for a stretch of work, given back afterwards.

torch.set_num_threads is process-wide: a library call that sets it and returns leaves every later caller (a
test, a pipeline step) on its setting.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` CPU threads (0 leaves the count as it is), then restore the previous count."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
