"""One trial of a sweep: the tuned pipeline with the sampled hyperparameters, reporting to Ray Tune.

The trial runs in a Ray worker that Tune started inside the placement group it reserved for the trial; the
pipeline finds that group and places its actors in it (cluster.placement.place). Every PPO step is
reported (training metrics; the objective keys NaN); the last report carries the evaluation and the score.
A trial that Tune restarts after an interruption resumes from its own pipeline checkpoint.
"""

import importlib
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from pipelines.tune import OBJECTIVE_KEYS, TUNABLE, finite, trial_config
from safelatent import checkpoint
from safelatent.tuning.objective import ObjectiveSettings, score


def trial_dirname(trial: Any) -> str:
    """Tune's folder for a trial: its id, which also names the trial's pipeline run."""
    return f"trial_{trial.trial_id}"


def run_trial(sample: dict[str, Any], setup: Mapping[str, Any]) -> None:
    """`setup`: tuned (pipeline name), sweep (its name), base (the prepared raw pipeline config), objective
    (ObjectiveSettings as data), baseline_accuracy (the base model's task accuracy, or None) and threads (torch
    threads of this process)."""
    import torch
    from ray import tune

    torch.set_num_threads(setup.get("threads", 1))
    module_name, class_name = TUNABLE[setup["tuned"]]
    module = importlib.import_module(module_name)
    base = {**setup["base"], "name": f"{setup['sweep']}-{tune.get_context().get_trial_id()}"}
    config = trial_config(getattr(module, class_name), base, sample)
    pending = {key: float("nan") for key in OBJECTIVE_KEYS}

    def on_step(step: int, metrics: dict[str, float], _roles: Any) -> None:
        tune.report({**pending, **{name: value for name, value in metrics.items() if finite(value)},
                     "step": step, "evaluated": 0})

    resume = checkpoint.latest_checkpoint(config.checkpoint_root()) is not None
    result = module.run(config, resume=resume, console=Console(stderr=True), on_step=on_step)
    evaluation = result.evaluation or {}
    values = {name: float(entry["value"]) for name, entry in evaluation.items()
              if isinstance(entry, Mapping) and finite(entry.get("value"))}
    objective = ObjectiveSettings.model_validate(setup["objective"])
    tune.report({**pending, **values, "score": score(evaluation, objective, setup["baseline_accuracy"]),
                 "step": result.steps_done, "evaluated": 1, "model_dir": str(result.model_dir),
                 "mlflow_run_id": result.tracking_run_id, "run_name": config.name})
