"""Held-out splits: whole templates and lexicon entries go to exactly one of train, validation or test."""

import random
from collections.abc import Sequence
from typing import TypeVar

SPLITS: tuple[str, ...] = ("train", "validation", "test")

T = TypeVar("T")


def seeded_rng(seed: int, *purpose: str) -> random.Random:
    """A generator for one purpose: independent of every other purpose, identical across runs."""
    return random.Random("/".join([str(seed), *purpose]))


def assign_splits(items: Sequence[T], rng: random.Random, validation: float, test: float) -> dict[str, list[T]]:
    """Shuffle `items` and cut them into disjoint splits; validation and test each get at least one."""
    shuffled = list(items)
    rng.shuffle(shuffled)
    n_test = max(1, round(len(shuffled) * test))
    n_validation = max(1, round(len(shuffled) * validation))
    if n_test + n_validation >= len(shuffled):
        raise ValueError(
            f"cannot hold out {n_validation} validation and {n_test} test items from only {len(shuffled)}: "
            "lower the holdout fractions or add entries"
        )
    return {
        "test": shuffled[:n_test],
        "validation": shuffled[n_test: n_test + n_validation],
        "train": shuffled[n_test + n_validation:],
    }
