"""The two pictures of a sweep: the Pareto front of harmlessness against task accuracy, and a
parallel-coordinates view of every trial's hyperparameters coloured by its objective."""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safelatent.tuning.objective import pareto_front


def write_pareto_plot(trials: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """`trials`: dicts with "trial", "harmlessness", "task_accuracy", and optional "default"/"best" flags.

    Every evaluated trial is a point; the undominated ones are joined by the front line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evaluated = [trial for trial in trials
                 if _finite(trial.get("harmlessness")) and _finite(trial.get("task_accuracy"))]
    if not evaluated:
        raise ValueError("no trial was evaluated; there is no Pareto front to draw")
    points = [(trial["task_accuracy"], trial["harmlessness"]) for trial in evaluated]
    front = pareto_front(points)
    figure = Figure(figsize=(6.5, 5))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.scatter([x for x, _ in points], [y for _, y in points], color="#9aa5b1", label="trial", zorder=2)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-o", color="#1f6feb",
            label="Pareto front", zorder=3)
    for trial, (x, y) in zip(evaluated, points, strict=True):
        ax.annotate(str(trial["trial"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for flag, marker, colour in (("default", "s", "#d29922"), ("best", "*", "#cf222e")):
            if trial.get(flag):
                ax.scatter([x], [y], marker=marker, s=160, facecolors="none" if marker == "s" else colour,
                           edgecolors=colour, label=f"{flag} config", zorder=4)
    ax.set_xlabel("task accuracy")
    ax.set_ylabel("harmlessness")
    ax.set_title(title or "harmlessness against task accuracy (both: higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def write_parallel_coordinates(trials: Sequence[Mapping[str, Any]], parameters: Sequence[str], path: str | Path,
                               objective: str = "score") -> Path:
    """One vertical axis per hyperparameter (then the objective), one line per evaluated trial.

    Each axis is scaled to the trials' own range; text values (a choice such as layer "auto") get one
    evenly spaced position each, in the order first seen. Lines are coloured by the objective.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evaluated = [trial for trial in trials if _finite(trial.get(objective))]
    if not evaluated:
        raise ValueError(f"no trial has a finite {objective}; nothing to draw")
    axes_names = [*parameters, objective]
    columns = [_scaled([trial["config"].get(name) if name != objective else trial[objective] for trial in evaluated])
               for name in axes_names]
    scores = [trial[objective] for trial in evaluated]
    low, high = min(scores), max(scores)
    colour = colormaps["viridis"]
    figure = Figure(figsize=(max(6.0, 1.6 * len(axes_names)), 4.5))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for row, score in enumerate(scores):
        shade = 0.5 if high == low else (score - low) / (high - low)
        ax.plot(range(len(axes_names)), [column[0][row] for column in columns], color=colour(shade), alpha=0.85)
    for position, (_, labels) in enumerate(columns):
        ax.axvline(position, color="#57606a", linewidth=0.8)
        for value, label in labels:
            ax.annotate(label, (position, value), textcoords="offset points", xytext=(3, 0), fontsize=7,
                        va="center")
    ax.set_xticks(range(len(axes_names)), axes_names, rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"trials by hyperparameter (colour: {objective}, brighter is better)")
    figure.tight_layout()
    return _save(figure, path)


def _scaled(values: list[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Positions in [0, 1] for `values`, and the labels to write on the axis (ends of a numeric range)."""
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        low, high = min(values), max(values)
        span = high - low
        positions = [0.5 if span == 0 else (value - low) / span for value in values]
        return positions, [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")] if span else [(0.5, f"{low:.3g}")]
    levels = list(dict.fromkeys(str(value) for value in values))
    place = {level: (index / (len(levels) - 1) if len(levels) > 1 else 0.5) for index, level in enumerate(levels)}
    return [place[str(value)] for value in values], [(position, level) for level, position in place.items()]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
