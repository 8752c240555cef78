"""Accuracy with its sample size and a 95% Wilson interval, overall and per group, as the project reports it.

For k successes in n trials, p̂ = k/n and the Wilson interval is
    (p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n),  z = 1.96,
which stays inside [0, 1] and is sensible at p̂ = 1, where judges on easy held-out sets often land.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Accuracy:
    correct: int
    n: int

    @classmethod
    def of(cls, outcomes: Sequence[bool]) -> "Accuracy":
        return cls(correct=sum(bool(outcome) for outcome in outcomes), n=len(outcomes))

    @property
    def value(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        if self.n == 0:
            return (0.0, 1.0)
        p, n, z2 = self.value, self.n, Z_95**2
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half_width = Z_95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return (max(0.0, centre - half_width), min(1.0, centre + half_width))

    def to_dict(self) -> dict[str, float | int | list[float]]:
        """The project's metric shape: {"value", "ci95": [lo, hi], "n"}."""
        return {"value": self.value, "ci95": list(self.ci95), "n": self.n}


def grouped_accuracy(outcomes: Sequence[bool], groups: Sequence[str]) -> dict[str, Accuracy]:
    """Accuracy of the outcomes within each group, groups in sorted order."""
    if len(outcomes) != len(groups):
        raise ValueError(f"one group per outcome is needed: got {len(groups)} groups for {len(outcomes)} outcomes")
    by_group: dict[str, list[bool]] = {}
    for outcome, group in zip(outcomes, groups, strict=True):
        by_group.setdefault(group, []).append(outcome)
    return {group: Accuracy.of(by_group[group]) for group in sorted(by_group)}
