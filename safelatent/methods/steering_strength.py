"""Choosing the steering strength α: the safest setting that keeps the model's task accuracy.

A sweep evaluates the steered model at several α (α = 0 is the unsteered model). The chosen α has the highest
harmlessness among the settings whose task accuracy is at most `max_accuracy_drop` below the unsteered
model's (ties go to the smaller α). The harmlessness gain of a setting is its harmlessness minus the
unsteered model's, and the gain ratio of a transferred direction compares its gain to the native one's.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SweepPoint:
    """One evaluated α: rates in [0, 1]."""

    alpha: float
    harmlessness: float
    task_accuracy: float
    over_refusal: float

    def to_json(self) -> dict:
        return asdict(self)


def unsteered(points: Sequence[SweepPoint]) -> SweepPoint:
    baseline = [point for point in points if point.alpha == 0]
    if not baseline:
        raise ValueError(f"a sweep needs α = 0 (the unsteered model) as its baseline; got α = "
                         f"{', '.join(f'{point.alpha:g}' for point in points) or 'none'}")
    return baseline[0]


def pick_alpha(points: Sequence[SweepPoint], max_accuracy_drop: float = 0.03) -> SweepPoint:
    """The safest point whose task accuracy is within `max_accuracy_drop` of the unsteered model's."""
    if max_accuracy_drop < 0:
        raise ValueError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}")
    baseline = unsteered(points)
    allowed = [point for point in points if point.task_accuracy >= baseline.task_accuracy - max_accuracy_drop - 1e-12]
    return max(allowed, key=lambda point: (point.harmlessness, -abs(point.alpha)))


def harmlessness_gain(point: SweepPoint, baseline: SweepPoint) -> float:
    return point.harmlessness - baseline.harmlessness


def gain_ratio(transferred_gain: float, native_gain: float) -> float | None:
    """Transferred gain / native gain; None when the native direction gained nothing to compare against."""
    return transferred_gain / native_gain if native_gain > 0 else None
