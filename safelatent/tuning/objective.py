"""What a sweep maximises: one scalar from an evaluation, and the Pareto front for the two-objective view.

The default scalar is harmlessness, less a penalty for each point of task accuracy lost beyond an allowed
drop from the start model:

    score = harmlessness − penalty · max(0, (baseline_accuracy − task_accuracy) − max_accuracy_drop)
                         − over_refusal_penalty · max(0, over_refusal − max_over_refusal)

with rates in [0, 1] (3 points = 0.03). The refusal term is off by default (over_refusal_penalty 0); it prices
what harmlessness alone rewards for free, refusing benign and borderline prompts, so trials that all reach 100%
harmlessness on a small selection split no longer tie. Any other metric of `results.json` can be the objective
instead ("over_refusal" and "asr/..." are minimised, the rest maximised).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from safelatent.config import Config

LOWER_IS_BETTER_PREFIXES = ("over_refusal", "asr/")


class ObjectiveSettings(Config):
    """The scalar a sweep optimises."""

    metric: str = Field("harmlessness", min_length=1, description="A metric name of results.json.")
    max_accuracy_drop: float = Field(0.03, ge=0, le=1, description="Task accuracy a trial may lose against the "
                                                                    "start model before the penalty applies.")
    penalty: float = Field(1.0, ge=0, description="Score lost per unit (1.0 = 100 points) of accuracy lost "
                                                  "beyond the allowed drop.")
    over_refusal_penalty: float = Field(0.0, ge=0, description="Score lost per unit of over-refusal (benign and "
                                                               "borderline prompts refused) beyond "
                                                               "`max_over_refusal`; 0 leaves refusals unpriced.")
    max_over_refusal: float = Field(0.0, ge=0, le=1, description="Over-refusal a trial may have before the "
                                                                 "refusal penalty applies.")


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER_PREFIXES)


def metric_value(metrics: Mapping[str, Any], name: str) -> float:
    """The value of one metric from a results.json "metrics" block (entries {"value", "ci95", "n"})."""
    if name not in metrics:
        raise KeyError(f"the evaluation has no metric {name!r}; it has {', '.join(sorted(metrics))}")
    entry = metrics[name]
    return float(entry["value"] if isinstance(entry, Mapping) else entry)


def score(metrics: Mapping[str, Any], settings: ObjectiveSettings, baseline_accuracy: float | None) -> float:
    """The objective, to maximise. Without a baseline accuracy no penalty can be computed, so none applies."""
    value = metric_value(metrics, settings.metric)
    if lower_is_better(settings.metric):
        value = -value
    if settings.over_refusal_penalty:
        excess = metric_value(metrics, "over_refusal") - settings.max_over_refusal
        value -= settings.over_refusal_penalty * max(0.0, excess)
    if baseline_accuracy is None or settings.penalty == 0:
        return value
    drop = baseline_accuracy - metric_value(metrics, "task_accuracy")
    return value - settings.penalty * max(0.0, drop - settings.max_accuracy_drop)


def rank(score_value: float, metrics: Mapping[str, Any]) -> tuple[float, float, float]:
    """Sort key of a trial, best last: the objective, then on a tie higher task accuracy, then lower over-refusal.

    Ties are common: harmlessness saturates at 100% on a small selection split, so many trials score alike.
    """
    accuracy = metrics.get("task_accuracy", float("-inf"))
    over_refusal = metrics.get("over_refusal", float("inf"))
    return (round(score_value, 9), float(accuracy), -float(over_refusal))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates maximised (ties keep both), in the
    order of the first coordinate."""
    front = []
    for index, (x, y) in enumerate(points):
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)
        if not dominated:
            front.append(index)
    return sorted(front, key=lambda index: points[index])
