"""Hyperparameter search over a training pipeline with Ray Tune, tracked in MLflow (DESIGN 8).

    baseline ← the base model's task accuracy on the selection split (what the objective's penalty measures from)
    parent   ← one MLflow run for the sweep
    for each trial (Optuna TPE or random search; FIFO or ASHA; as many at once as the cluster fits):
        config ← pipeline config + `trial` settings + the sampled hyperparameters
        run the pipeline in the trial (its own actors, in the bundles the trial reserved), a child MLflow run,
        report every step to Tune, evaluate on the selection split, report the objective
    best     ← the evaluated trial with the highest objective
    evaluate best (and the default config's trial) on the report split; register best; alias `champion`
    only if the release gate passes; lineage as version tags; Pareto and parallel-coordinates plots

A sweep has a deterministic name, so rerunning it with --resume restores it through Tune: finished trials
keep their results and an unfinished trial continues from its own pipeline checkpoint.
"""

import importlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from rich.console import Console
from rich.table import Table

from safelatent.config import Config, apply_overrides, config_hash, dump_config, load_config, validate_config
from safelatent.errors import ConfigError, SafelatentError
from safelatent.tracking import TrackingSettings
from safelatent.tuning.gate import ReleaseGate
from safelatent.tuning.objective import ObjectiveSettings, lower_is_better
from safelatent.tuning.space import Parameter, check_space

# The pipelines a sweep can tune: name → (module, config class). Each module has `run(config, resume, console,
# on_step)` returning a RunResult.
TUNABLE = {"sls-rlaif": ("pipelines.sls_rlaif", "SLSRLAIFConfig"),
           "rlaif-ppo": ("pipelines.rlaif_ppo", "RLAIFPPOConfig")}
# Reported by every trial at every step, NaN until the trial's evaluation measures them.
OBJECTIVE_KEYS = ("score", "harmlessness", "task_accuracy", "over_refusal")


class SearchSettings(Config):
    algorithm: Literal["optuna", "random"] = Field("optuna", description="optuna: TPE; random: random and grid.")
    num_samples: int = Field(8, ge=1, description="Trials in all, the default config's trial included.")
    seed: int = Field(0, ge=0)
    include_default: bool = Field(True, description="The first trial runs the pipeline config as it is: the "
                                                    "baseline the sweep has to beat.")
    multi_objective: bool = Field(False, description="Search harmlessness and task accuracy as two objectives "
                                                     "(Pareto); otherwise the scalar objective.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials at once; null: as many as the cluster fits.")


class SchedulerSettings(Config):
    kind: Literal["fifo", "asha", "pbt"] = Field("fifo", description="fifo: every trial runs to the end; asha: "
                                                                    "stop the weak ones early; pbt: weak trials "
                                                                    "continue from a strong one's checkpoint with "
                                                                    "perturbed `mutate` values.")
    metric: str = Field("reward", description="What ASHA and PBT compare each step (higher is better): a training "
                                              "metric every step reports, such as reward.")
    grace_period: int = Field(2, ge=1, description="ASHA: steps before a trial may be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: the share of trials kept at each rung is 1/this.")
    perturbation_interval: int = Field(4, ge=1, description="PBT: steps between exploit/explore decisions (the "
                                                            "trials checkpoint at this interval).")
    mutate: list[str] = Field(default_factory=lambda: ["ppo.kl.beta", "optimizer.learning_rate"],
                              description="PBT: keys of the space that are perturbed when a trial exploits another.")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="PBT: the bottom share copies the top share.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="PBT: chance a mutated value is drawn anew "
                                                                      "instead of scaled by 0.8 or 1.2.")


class FinalEvaluation(Config):
    """Where the best trial (and the default one) are measured once the search is over: not the split the
    trials were selected on."""

    data: str = "microworld:test"
    limit: int | None = Field(60, ge=1)


class TuneConfig(Config):
    """A sweep; `safelatent tune -c pipelines/configs/tune_sls.yaml key=value ...`."""

    pipeline: ClassVar[str] = "tune"
    name: str = Field("tune-sls", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Sweep name: its folder "
                                                                                        "and MLflow parent run.")
    tuned: Literal["sls-rlaif", "rlaif-ppo"] = Field("sls-rlaif", description="The pipeline the trials run.")
    pipeline_config: str = Field("pipelines/configs/sls_rlaif.yaml", description="Its config: the default trial.")
    trial: dict[str, Any] = Field(default_factory=dict, description="Dotted keys set in every trial's config "
                                                                    "(fewer steps, the selection split...).")
    space: dict[str, Parameter] = Field(default_factory=dict, description="Dotted config key → distribution.")
    search: SearchSettings = Field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    gate: ReleaseGate = Field(default_factory=ReleaseGate)
    final_evaluation: FinalEvaluation = Field(default_factory=FinalEvaluation)
    tracking: TrackingSettings = Field(default_factory=lambda: TrackingSettings(registered_model="sls-rlaif-tuned"))
    out_root: str = Field("runs/tune", description="The sweep writes to <out_root>/<name>/ (Tune's state too).")
    address: str | None = Field(None, description="Ray cluster address; null starts an embedded local cluster.")

    @model_validator(mode="after")
    def _consistent(self) -> "TuneConfig":
        if not Path(self.pipeline_config).is_file():
            raise ValueError(f"pipeline_config: no config file at {self.pipeline_config}")
        try:
            base = self.trial_raw()
            check_space(self.space, self.pipeline_class(), base)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        if not base.get("evaluation", {}).get("enabled", True):
            raise ValueError("trial: evaluation.enabled must stay true; a trial's objective is its evaluation")
        tuned_resources = [key for key in self.space if key.split(".")[0] in ("resources", "name", "out_root")]
        if tuned_resources:
            raise ValueError(f"space: {', '.join(tuned_resources)} cannot be tuned; a trial's resources are reserved "
                             "before it samples")
        grids = [key for key, parameter in self.space.items() if parameter.kind == "grid"]
        if grids and self.search.algorithm == "optuna":
            raise ValueError(f"space: grid ({', '.join(grids)}) needs search.algorithm random; Optuna samples")
        if self.scheduler.kind == "pbt":
            self._check_pbt(base)
        if self.search.include_default:
            outside = [f"{key} = {default_value(base, key)!r}" for key, parameter in self.space.items()
                       if not parameter_holds(parameter, default_value(base, key))]
            if outside:
                raise ValueError("search.include_default: the default config's values are outside the space: "
                                 f"{'; '.join(outside)}. Widen the space or set search.include_default false")
        return self

    def _check_pbt(self, base: Mapping[str, Any]) -> None:
        pbt = self.scheduler
        if self.search.algorithm != "random":
            raise ValueError("scheduler.kind pbt picks the next configs itself; set search.algorithm random")
        if not pbt.mutate:
            raise ValueError("scheduler.mutate: name at least one key of the space for PBT to perturb")
        unknown = [key for key in pbt.mutate if key not in self.space]
        if unknown:
            raise ValueError(f"scheduler.mutate: {', '.join(unknown)} not in the space")
        frozen = [key for key in pbt.mutate if not key.startswith(("ppo.", "optimizer."))]
        if frozen:
            raise ValueError(f"scheduler.mutate: {', '.join(frozen)} cannot change in the middle of a run (only "
                             "ppo.* and optimizer.* settings can; the head is fitted before PPO starts)")
        if pbt.perturbation_interval >= base["steps"]:
            raise ValueError(f"scheduler.perturbation_interval ({pbt.perturbation_interval}) must be below the "
                             f"trials' steps ({base['steps']}), or PBT never acts")

    def pipeline_class(self) -> type[Config]:
        module, name = TUNABLE[self.tuned]
        return getattr(importlib.import_module(module), name)

    def trial_raw(self) -> dict[str, Any]:
        """The tuned pipeline's config file with the `trial` settings applied, as plain data (validated)."""
        overrides = [f"{key}={json.dumps(value)}" for key, value in self.trial.items()]
        config = load_config(self.pipeline_class(), self.pipeline_config, overrides)
        return config.model_dump(mode="json")

    def out_dir(self) -> Path:
        return Path(self.out_root) / self.name


def default_value(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node[part]
    return node


def parameter_holds(parameter: Parameter, value: Any) -> bool:
    if parameter.kind in ("choice", "grid"):
        return value in parameter.values()
    low, high = parameter.values()
    return isinstance(value, (int, float)) and low <= value <= high


@dataclass
class TrialOutcome:
    """One trial as the sweep saw it."""

    trial: str
    config: dict[str, Any]
    status: Literal["evaluated", "stopped", "failed"]
    metrics: dict[str, float] = field(default_factory=dict)
    score: float = float("nan")
    model_dir: str | None = None
    mlflow_run_id: str | None = None
    error: str | None = None
    default: bool = False
    best: bool = False

    def row(self) -> dict[str, Any]:
        return {"trial": self.trial, "config": self.config, "status": self.status, "score": self.score,
                **self.metrics, "model_dir": self.model_dir, "mlflow_run_id": self.mlflow_run_id,
                "error": self.error, "default": self.default, "best": self.best}


@dataclass
class SweepResult:
    out_dir: Path
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    default: TrialOutcome | None
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial → metrics on the report split
    registered: str | None = None
    champion: bool = False
    gate_failures: list[str] = field(default_factory=list)
    pareto: list[str] = field(default_factory=list)
    tracking_run: str | None = None


def run(config: TuneConfig, resume: bool = False, console: Console | None = None) -> SweepResult:
    from pipelines.tune_driver import Sweep

    console = console or Console(stderr=True)
    return Sweep(config, console).run(resume=resume)


def summary_table(result: SweepResult, config: TuneConfig) -> Table:
    metric = config.objective.metric
    table = Table(title=f"sweep {config.name!r}: {len(result.trials)} trials of {config.tuned} "
                        f"(objective: {metric}{', minimised' if lower_is_better(metric) else ''}, penalised "
                        f"beyond a {config.objective.max_accuracy_drop:.0%} accuracy drop"
                        + (f" and beyond {config.objective.max_over_refusal:.0%} over-refusal"
                           if config.objective.over_refusal_penalty else "") + ")")
    for column in ("trial", "status", "score", "harmlessness", "task acc.", "over-refusal", "sampled"):
        table.add_column(column, overflow="fold")
    for trial in result.trials:
        flags = " (default)" * trial.default + " (best)" * trial.best
        table.add_row(trial.trial + flags, trial.status, _number(trial.score),
                      *(_rate(trial.metrics.get(name)) for name in ("harmlessness", "task_accuracy", "over_refusal")),
                      trial.error or ", ".join(f"{key}={_value(value)}" for key, value in trial.config.items()))
    return table


def write_summary(result: SweepResult, config: TuneConfig) -> Path:
    path = result.out_dir / "summary.json"
    path.write_text(json.dumps({
        "name": config.name, "config_hash": config_hash(config), "tuned": config.tuned,
        "objective": config.objective.model_dump(mode="json"),
        "best": result.best.row() if result.best else None, "default": result.default.row() if result.default else None,
        "final_evaluation": {"data": config.final_evaluation.data, "metrics": result.final},
        "registered": result.registered, "champion": result.champion, "gate_failures": result.gate_failures,
        "pareto_front": result.pareto, "mlflow": result.tracking_run,
        "trials": [trial.row() for trial in result.trials]}, indent=2, default=str) + "\n")
    dump_config(config, result.out_dir / "config.yaml")
    return path


def trial_config(config_class: type[Config], base: Mapping[str, Any], sample: Mapping[str, Any]) -> Config:
    """A trial's pipeline config: the prepared base with the sampled values set, validated."""
    raw = json.loads(json.dumps(base))
    apply_overrides(raw, [f"{key}={json.dumps(value)}" for key, value in sample.items()])
    return validate_config(config_class, raw, source="the trial's sample")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def absolute(path: str | None) -> str | None:
    """Local paths absolute (Tune trials may run elsewhere); URIs as they are."""
    if path is None or "://" in path:
        return path
    return str(Path(path).resolve())


def absolute_tracking_uri(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _rate(value: Any) -> str:
    return f"{value:.1%}" if finite(value) else "-"


def _number(value: Any) -> str:
    return f"{value:.4f}" if finite(value) else "-"


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def chdir_off() -> None:
    """Trials keep the driver's working directory (Tune would move each into its trial folder), so relative
    paths and the git commit in the run's lineage resolve the same everywhere."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")


class SweepError(SafelatentError):
    """The sweep cannot start or resume as asked."""
