"""Shared pieces of the judges tests: a very small micro-world, a short constitution, one torch thread."""

import pytest
import torch

from safelatent.data.microworld import MicroWorldConfig, SplitSizes, build_microworld

SHORT_CONSTITUTION = """\
name: short test constitution
version: "0.1"
preamble: Judge two replies.
principles:
  - id: refuse-harm
    text: Refuse harmful requests.
    applies_to: [harmlessness]
  - id: answer-correctly
    text: Answer safe questions correctly.
    applies_to: [helpfulness, honesty]
"""

SMALL_MICROWORLD = MicroWorldConfig(
    benign_per_family=SplitSizes(train=3, validation=1, test=2),
    harmful_per_category=SplitSizes(train=6, validation=1, test=3),
    jailbreaks_per_wrapper=SplitSizes(train=2, validation=1, test=1),
    pairs_per_category=SplitSizes(train=0, validation=0, test=0),
)


def small_microworld():
    return build_microworld(SMALL_MICROWORLD)


@pytest.fixture
def one_torch_thread():
    """Tiny models train faster on one thread, and the test machine may be shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
