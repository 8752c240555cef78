"""RLAIF-PPO: PPO from AI feedback on Ray (DESIGN 3 and 6.1).

    for step in steps:
        prompts  ← the step's mix of micro-world prompts
        batch    ← RolloutWorker×N sample G responses per prompt (policy weights of the last update)
        rewards  ← RewardScorer×M score them (reward model − harm penalty), in parallel with
        ref      ← ReferenceWorker log-probs of the frozen base
        stats    ← LearnerGroup×K PPO update (DDP), β ← KL controller
        weights  → rollout workers (rank 0 puts them in the object store once, each worker reads them)
    export the policy, evaluate it, log everything to MLflow

With `rollout.async_rollout` the sampling of batch k+1 overlaps the update on batch k; the learner then
corrects the one-step-stale samples by truncated importance weights.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cluster.placement import RoleResources
from safelatent.config import Config, config_hash, dump_config
from safelatent.data.microworld import MicroWorldConfig
from safelatent.data.prompts import PromptMix
from safelatent.judges.feedback import FeedbackSettings
from safelatent.methods.learner import OptimizerSettings
from safelatent.methods.ppo import PPOSettings
from safelatent.models.policy import PolicySettings
from safelatent.tracking import TrackingSettings


class RolloutSettings(Config):
    """How responses are sampled."""

    prompts_per_step: int = Field(16, ge=1, description="Distinct prompts per PPO step.")
    samples_per_prompt: int = Field(4, ge=1, description="Responses sampled per prompt (the group of grpo/rloo).")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    async_rollout: bool = Field(False, description="Sample batch k+1 while the learners update on batch k "
                                                   "(one step off-policy, importance-corrected).")
    off_policy_cap: float = Field(2.0, ge=1, description="Truncation of the off-policy importance weights.")


class Resources(Config):
    """The roles' replicas and reservations; all go into one placement group."""

    rollout_workers: int = Field(1, ge=1)
    reward_workers: int = Field(1, ge=1)
    learners: int = Field(1, ge=1, description="Data-parallel learner ranks (DDP).")
    rollout: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.5))
    reward: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.25))
    reference: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.25))
    learner: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.5))
    threads_per_actor: int = Field(1, ge=0, description="torch CPU threads per actor, unless its role sets "
                                                        "`threads`; 0 keeps torch's default.")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    ready_timeout_s: float = Field(120.0, gt=0, description="Wait this long for the placement group, then fail "
                                                            "with the unmet demand.")
    max_restarts: int = Field(3, ge=0, description="Restarts of a rollout, reward or reference actor that dies.")

    def roles(self) -> dict[str, tuple[int, RoleResources]]:
        return {"rollout": (self.rollout_workers, self.rollout), "reward": (self.reward_workers, self.reward),
                "reference": (1, self.reference), "learner": (self.learners, self.learner)}


class CheckpointSettings(Config):
    dir: str | None = Field(None, description="Local directory or s3://bucket/prefix; default <out>/checkpoints.")
    every: int = Field(10, ge=1, description="Save every this many steps (and after the last one).")
    keep: int = Field(2, ge=1, description="Newest checkpoints kept.")


class EvaluationSettings(Config):
    enabled: bool = True
    data: str = Field("microworld:test", description="Data spec for safelatent eval.")
    limit: int | None = Field(60, ge=1, description="Prompts per kind; null for the whole split.")
    max_new_tokens: int = Field(64, ge=1)


class RLAIFPPOConfig(Config):
    """The rlaif-ppo pipeline; `safelatent train rlaif-ppo -c pipelines/configs/rlaif_ppo.yaml key=value ...`."""

    pipeline: ClassVar[str] = "rlaif-ppo"
    name: str = Field("rlaif-ppo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name: output folder "
                                                                                         "and MLflow run name.")
    seed: int = Field(0, ge=0)
    steps: int = Field(40, ge=1, description="PPO steps (one batch of rollouts each).")
    model: str | None = Field(None, description="Policy to start from (directory, hub id or s3://); null builds "
                                                "or reuses the base model of base_model_config.")
    base_model_config: str | None = Field("pipelines/configs/base_model.yaml")
    judges: str | None = Field(None, description="A judges build directory; null builds or reuses judges_config.")
    judges_config: str | None = Field("pipelines/configs/judges.yaml")
    policy: PolicySettings = Field(default_factory=PolicySettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    microworld: MicroWorldConfig = Field(default_factory=MicroWorldConfig, description="Where the prompts come from.")
    prompts: PromptMix = Field(default_factory=PromptMix)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    ppo: PPOSettings = Field(default_factory=PPOSettings)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    resources: Resources = Field(default_factory=Resources)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    out_root: str = Field("runs/rlaif_ppo", description="The run writes to <out_root>/<name>/.")
    address: str | None = Field(None, description="Ray cluster address; null starts an embedded local cluster.")

    @model_validator(mode="after")
    def _consistent(self) -> "RLAIFPPOConfig":
        if bool(self.model) == bool(self.base_model_config):
            raise ValueError("set exactly one of model (a model to start from) and base_model_config (build it)")
        if bool(self.judges) == bool(self.judges_config):
            raise ValueError("set exactly one of judges (a judges build directory) and judges_config (build it)")
        for key in ("base_model_config", "judges_config"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ValueError(f"{key}: no config file at {path}")
        if self.judges and not Path(self.judges).is_dir():
            raise ValueError(f"judges: no judges build at {self.judges}; build one with `safelatent judges build`")
        if self.rollout.prompts_per_step % self.resources.learners:
            raise ValueError(f"rollout.prompts_per_step ({self.rollout.prompts_per_step}) must be a multiple of "
                             f"resources.learners ({self.resources.learners}) so no prompt's group is split")
        if self.ppo.estimator in ("grpo", "rloo") and self.rollout.samples_per_prompt < 2:
            raise ValueError(f"ppo.estimator {self.ppo.estimator} compares responses to the same prompt; set "
                             "rollout.samples_per_prompt >= 2")
        per_rank = self.rollout.prompts_per_step * self.rollout.samples_per_prompt // self.resources.learners
        if self.ppo.minibatch_size > per_rank:
            raise ValueError(f"ppo.minibatch_size ({self.ppo.minibatch_size}) exceeds the {per_rank} rollouts each "
                             "learner gets per step")
        return self

    def out_dir(self) -> Path:
        return Path(self.out_root) / self.name

    def checkpoint_root(self) -> str:
        return self.checkpoint.dir or str(self.out_dir() / "checkpoints")


@dataclass
class RunResult:
    out_dir: Path
    model_dir: Path | None
    steps_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    tracking_run: str | None = None
    tracking_run_id: str | None = None
    checkpoint: str | None = None
    registered: str | None = None  # "NAME version N" in the MLflow model registry


StepCallback = Callable[[int, dict[str, float], Any], None]


def run(config: RLAIFPPOConfig, resume: bool = False, console: Console | None = None,
        on_step: StepCallback | None = None) -> RunResult:
    """Train, export, evaluate; `on_step(step, metrics, roles)` is called after every step (tests use it)."""
    from pipelines.ppo_engine import PPOEngine

    console = console or Console(stderr=True)
    engine = PPOEngine(config, console)
    return engine.run(resume=resume, on_step=on_step)


def summary_table(result: RunResult, config: RLAIFPPOConfig) -> Table:
    table = Table(title=f"{config.pipeline} run {config.name!r}: {result.steps_done} of {config.steps} steps")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    last = result.history[-1] if result.history else {}
    for name in ("reward", "harm_probability", "kl_to_ref", "response_length", "samples_per_second"):
        if name in last:
            table.add_row(name, f"{last[name]:.4g}")
    if result.evaluation:
        for name in ("harmlessness", "task_accuracy", "over_refusal"):
            metric = result.evaluation.get(name)
            if metric and metric.get("value") is not None:
                table.add_row(f"eval {name}", f"{metric['value']:.1%} (n={metric.get('n')})")
    table.add_row("model", str(result.model_dir))
    table.add_row("report", str(result.out_dir / "eval" / "report.md") if result.evaluation else "not evaluated")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("mlflow", str(result.tracking_run))
    if result.registered:
        table.add_row("registered", result.registered)
    return table


def write_summary(result: RunResult, config: RLAIFPPOConfig) -> Path:
    path = result.out_dir / "summary.json"
    path.write_text(json.dumps({
        "name": config.name, "config_hash": config_hash(config), "steps": result.steps_done,
        "model": str(result.model_dir), "checkpoint": result.checkpoint, "mlflow": result.tracking_run,
        "registered": result.registered,
        "final_metrics": result.history[-1] if result.history else {}, "evaluation": result.evaluation},
        indent=2, default=str) + "\n")
    dump_config(config, result.out_dir / "config.yaml")
    return path


def progress_bar(console: Console, pipeline: str) -> Progress:
    return Progress(TextColumn(f"[bold]{pipeline}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console,
                    transient=False)


def seconds_since(started: float) -> float:
    return time.perf_counter() - started


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def as_tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)
