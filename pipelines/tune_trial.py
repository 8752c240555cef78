"""One trial of a sweep: the tuned pipeline with the sampled hyperparameters, reporting to Ray Tune.

The trial runs in a Ray worker that Tune started inside the placement group it reserved for the trial; the
pipeline finds that group and places its actors in it (cluster.placement.place). Every PPO step is
reported (training metrics; the objective keys NaN), with the pipeline's checkpoint when it took one; the
last report carries the evaluation and the score.

A trial that Tune starts with a checkpoint (its own after an interruption, or a stronger trial's when PBT
exploits it) continues from that checkpoint: it replaces the trial's own checkpoints, and when it came from
another trial the run opens a new MLflow child run instead of the other trial's.
"""

import importlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from pipelines.tune import OBJECTIVE_KEYS, TUNABLE, finite, trial_config
from safelatent import checkpoint
from safelatent.tuning.objective import ObjectiveSettings, score


def trial_dirname(trial: Any) -> str:
    """Tune's folder for a trial: its id, which also names the trial's pipeline run."""
    return dirname_for(trial.trial_id)


def dirname_for(trial_id: str) -> str:
    return f"trial_{trial_id}"


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
        values = {**pending, **{name: value for name, value in metrics.items() if finite(value)}, "step": step,
                  "evaluated": 0}
        latest = checkpoint.latest_checkpoint(config.checkpoint_root())
        if latest is None or latest[0] != step or checkpoint.is_remote(latest[1]):
            tune.report(values)
            return
        # Tune keeps (and may move) what it is given: hand it a copy of the pipeline's checkpoint.
        with tempfile.TemporaryDirectory(prefix="safelatent-tune-ckpt-") as scratch:
            copy = Path(scratch) / Path(latest[1]).name
            shutil.copytree(latest[1], copy)
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(scratch))

    own_dirname = dirname_for(tune.get_context().get_trial_id())
    restored_from = adopt_tune_checkpoint(tune.get_checkpoint(), config.checkpoint_root(), own_dirname)
    resume = checkpoint.latest_checkpoint(config.checkpoint_root()) is not None
    result = module.run(config, resume=resume, console=Console(stderr=True), on_step=on_step)
    evaluation = result.evaluation or {}
    values = {name: float(entry["value"]) for name, entry in evaluation.items()
              if isinstance(entry, Mapping) and finite(entry.get("value"))}
    objective = ObjectiveSettings.model_validate(setup["objective"])
    # The training metrics of the last step come along: schedulers (ASHA, PBT) expect theirs in every report.
    last_step = {name: value for name, value in (result.history[-1] if result.history else {}).items()
                 if finite(value)}
    tune.report({**pending, **last_step, **values,
                 "score": score(evaluation, objective, setup["baseline_accuracy"]),
                 "step": result.steps_done, "evaluated": 1, "model_dir": str(result.model_dir),
                 "mlflow_run_id": result.tracking_run_id, "run_name": config.name,
                 "restored_from_step": restored_from})


def adopt_tune_checkpoint(tune_checkpoint: Any, root: str, own_dirname: str) -> int:
    """Make the checkpoint Tune handed this trial its only pipeline checkpoint; the step it holds (0: none).

    A checkpoint from another trial (PBT) keeps its weights, optimizer and history but not that trial's MLflow
    run id, so this trial's run is its own.
    """
    if tune_checkpoint is None or checkpoint.is_remote(root):
        return 0
    with tune_checkpoint.as_directory() as directory:
        source = next((path for path in Path(directory).iterdir() if path.is_dir()
                       and (path / checkpoint.COMPLETE_MARKER).is_file()), None)
        if source is None:
            return 0
        shutil.rmtree(root, ignore_errors=True)
        target = Path(root) / source.name
        shutil.copytree(source, target)
    state_file = target / checkpoint.STATE_FILE
    state = json.loads(state_file.read_text())
    if own_dirname not in Path(tune_checkpoint.path).parts:
        state.pop("mlflow_run_id", None)
        state_file.write_text(json.dumps(state, indent=2) + "\n")
    return int(state["step"])
