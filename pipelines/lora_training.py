"""What the representation-level pipelines (ES2, SafeSteer) share: LoRA training on Ray Train, export, evaluation.

    driver:   config checked → micro-world rows → Ray connection → run_training(loop) on `train.workers` ranks
    worker:   build the LoRA student (restored from the run's latest checkpoint, if any) → DDP when several ranks
              → the method's steps, rank 0 logging to the driver's MLflow run → checkpoint every k steps and last
    driver:   merge the adapters into a plain model directory → `safelatent eval` on the held-out split → MLflow

Each method module (pipelines/es2.py, pipelines/safesteer.py) supplies its config, its worker loop and its
report; nothing here knows the method's math.
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
from rich.table import Table

from cluster.train import TrainSettings
from safelatent.config import Config, config_hash
from safelatent.data.microworld import MicroWorldConfig
from safelatent.errors import ConfigError
from safelatent.methods.learner import step_seed
from safelatent.models.loading import DeviceName, DTypeName
from safelatent.models.lora import LoraSettings
from safelatent.tracking import TrackingSettings

STATE_FILE = "state.pt"
Split = Literal["train", "validation", "test"]


class StudentSettings(Config):
    """The LoRA student and its optimiser."""

    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(r=8, alpha=16.0))
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    steps: int = Field(60, ge=1, description="Optimiser steps.")
    checkpoint_every: int = Field(20, ge=1, description="Checkpoint every this many steps (and after the last).")
    threads: int = Field(1, ge=0, description="torch CPU threads per worker; 0 keeps torch's default.")
    dtype: DTypeName = Field("auto", description="auto: bfloat16 on GPU, float32 on CPU.")


class EvaluationSettings(Config):
    """The held-out evaluation of the trained model (and of its starting model), with `safelatent eval`."""

    enabled: bool = True
    split: Split = "test"
    limit: int | None = Field(40, ge=1, description="Prompts per kind (and jailbreak style); null: all of them.")
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)
    seed: int = Field(0, ge=0)
    device: DeviceName = "auto"


class LoraPipelineConfig(Config):
    """Fields every representation-level pipeline has."""

    pipeline: ClassVar[str] = "lora"

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name: output folder, Ray Train "
                                                                           "run and MLflow run name.")
    seed: int = Field(0, ge=0)
    model: str | None = Field(None, description="Starting model: a directory, hub id or s3:// prefix; null: the "
                                                "micro-world base model of base_model_config.")
    base_model_config: str = Field("pipelines/configs/base_model.yaml", description="Built (or reused from cache) "
                                                                                    "when model is null.")
    microworld: MicroWorldConfig = Field(default_factory=MicroWorldConfig)
    microworld_dir: str | None = Field(None, description="A saved micro-world (safelatent data build) instead of "
                                                         "building `microworld`.")
    student: StudentSettings = Field(default_factory=StudentSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    out_root: str = Field("runs", description="The run writes to <out_root>/<name>/.")
    address: str | None = Field(None, description="Ray cluster address; null starts an embedded local cluster.")

    @model_validator(mode="after")
    def _inputs_exist(self) -> "LoraPipelineConfig":
        if self.model is None and not Path(self.base_model_config).is_file():
            raise ValueError(f"base_model_config: no config file at {self.base_model_config} (or set model)")
        if self.microworld_dir and not Path(self.microworld_dir).is_dir():
            raise ValueError(f"microworld_dir: no micro-world at {self.microworld_dir}; build one with "
                             "`safelatent data build --out DIR`")
        return self

    def out_dir(self) -> Path:
        return Path(self.out_root) / self.name


@dataclass
class LoraRunResult:
    out_dir: Path
    model_dir: Path
    report: dict[str, Any] = field(default_factory=dict)
    tracking_run: str | None = None
    registered: str | None = None


@dataclass
class RunSetup:
    """What the driver has once the inputs are checked: the starting model, the run folder, the micro-world and
    the MLflow run (a failure after this point must mark it FAILED)."""

    model: str
    out: Path
    world_dir: Path
    rows: dict[str, list[dict]]
    tracker: Any
    started: float


def begin(config: "LoraPipelineConfig", resume: bool, console: Console,
          check: Callable[[str], Any] | None = None) -> tuple[RunSetup, Any]:
    """Check everything that can fail early (the model, `check(model)`, the run name), then prepare the run folder,
    the micro-world and the MLflow run. Returns the setup and what `check` returned."""
    from safelatent.config import dump_config

    started = time.perf_counter()
    model = resolve_model(config, console)
    checked = check(model) if check is not None else None
    check_resume(config, resume)
    out = config.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    world_dir, rows = microworld_rows(config, out, console)
    dump_config(config, out / "config.yaml")
    tracker = start_tracking(config, config.pipeline, model, resume, out)
    return RunSetup(model, out, world_dir, rows, tracker, started), checked


def worker_config(config: "LoraPipelineConfig", setup: RunSetup, **method: Any) -> dict[str, Any]:
    """The loop config every worker gets: the shared keys plus the method's own."""
    return {"model": setup.model, "seed": config.seed, "name": config.name, "student": config.student.model_dump(),
            "tracking": config.tracking.for_another_process().model_dump(), "mlflow_run_id": setup.tracker.run_id,
            **method}


def evaluate_both(config: "LoraPipelineConfig", setup: RunSetup, model_dir: Path,
                  console: Console) -> dict[str, Any]:
    """`safelatent eval` of the starting and the trained model on the configured split ({} when disabled)."""
    if not config.evaluation.enabled:
        return {}
    with console.status(f"evaluating the starting and the trained model on {config.evaluation.split}"):
        return {"start": evaluate(setup.model, setup.world_dir, config.evaluation, setup.out / "eval" / "start"),
                "trained": evaluate(str(model_dir), setup.world_dir, config.evaluation,
                                    setup.out / "eval" / "trained")}


def base_report(config: "LoraPipelineConfig", setup: RunSetup, outcome, evaluations: dict[str, Any]
                ) -> dict[str, Any]:
    """The report fields every representation-level pipeline shares."""
    from safelatent.evaluation.harness import git_commit

    report: dict[str, Any] = {
        "pipeline": config.pipeline, "name": config.name, "config_hash": config_hash(config), "commit": git_commit(),
        "starting_model": setup.model, "final_step_metrics": outcome.metrics, "resumed": outcome.resumed,
        "training_run": outcome.run_path, "seconds": time.perf_counter() - setup.started,
    }
    for role, results in evaluations.items():
        report[f"evaluation_{role}"] = dict(results["metrics"])
    return report


def conclude(config: "LoraPipelineConfig", setup: RunSetup, model_dir: Path, report: dict[str, Any],
             report_file: str, metrics: dict[str, float]) -> LoraRunResult:
    """Write the report, log the evaluations and `metrics` with the model, register it, finish the MLflow run."""
    (setup.out / report_file).write_text(json.dumps(report, indent=2) + "\n")
    result = LoraRunResult(out_dir=setup.out, model_dir=model_dir, report=report)
    logged = {f"{'eval' if role == 'trained' else 'start'}/{name}": metric["value"]
              for role in ("start", "trained") for name, metric in report.get(f"evaluation_{role}", {}).items()}
    finish_tracking(setup.tracker, config, result, {**logged, **metrics},
                    [setup.out / report_file, setup.out / "config.yaml"], f"{config.pipeline} run {config.name}")
    return result


def comparison_table(result: LoraRunResult, method: str) -> Table:
    """The starting model beside the trained one on the headline metrics."""
    report = result.report
    table = Table(title=f"{report['pipeline']} run {report['name']!r} from {report['starting_model']}")
    table.add_column("metric")
    table.add_column("starting model", justify="right")
    table.add_column(method, justify="right")
    start, trained = report.get("evaluation_start", {}), report.get("evaluation_trained", {})
    for name in ("harmlessness", "over_refusal", "task_accuracy"):
        if name in trained:
            table.add_row(name, f"{start[name]['value']:.1%}", f"{trained[name]['value']:.1%}")
    return table


# -- driver ---------------------------------------------------------------------------------------------------------

def resolve_model(config: LoraPipelineConfig, console: Console) -> str:
    """The starting model; a local path that does not exist fails here, before anything starts."""
    if config.model:
        local = config.model.startswith(("/", ".", "~")) or config.model.count("/") >= 2  # hub ids: org/name
        if local and not config.model.startswith("s3://") and not Path(config.model).expanduser().exists():
            raise ConfigError(f"model: {config.model} does not exist. Train it first (the default ES2 starting model "
                              "comes from `safelatent train safesteer`) or pass model=DIR, a hub id or s3://")
        # Ray Train workers run in a directory of their own: hand them an absolute path.
        return str(Path(config.model).expanduser().resolve()) if Path(config.model).expanduser().exists() \
            else config.model
    from safelatent.config import load_config
    from safelatent.models.base_model import BaseModelConfig, build_base_model

    console.print(f"starting model: the base model of {config.base_model_config} (built once, then cached)")
    return str(build_base_model(load_config(BaseModelConfig, config.base_model_config), progress=True).resolve())


def microworld_rows(config: LoraPipelineConfig, out: Path, console: Console) -> tuple[Path, dict[str, list[dict]]]:
    """The saved micro-world (given, or built into the run folder once) and its rows per split."""
    import datasets

    from safelatent.data.microworld import build_microworld, load_microworld, save_microworld

    directory = Path(config.microworld_dir) if config.microworld_dir else out / "microworld"
    if not config.microworld_dir and not (directory / "manifest.json").is_file():
        with console.status("building the micro-world"):
            save_microworld(build_microworld(config.microworld), config.microworld, directory)
    datasets.disable_progress_bars()
    world = load_microworld(directory)
    return directory, {split: world[split].to_list() for split in world}


def training_storage(config: LoraPipelineConfig) -> str:
    return config.train.storage_or((config.out_dir() / "ray_train").resolve())


def check_resume(config: LoraPipelineConfig, resume: bool) -> None:
    """Refuse, before anything starts, to silently continue (or restart) a run that has checkpoints."""
    import pyarrow.fs

    from cluster.train import SNAPSHOT_FILE, storage_filesystem

    path, filesystem = storage_filesystem(training_storage(config), config.train.s3_endpoint_url)
    info = (filesystem or pyarrow.fs.LocalFileSystem()).get_file_info(f"{path}/{config.name}/{SNAPSHOT_FILE}")
    if info.type != pyarrow.fs.FileType.NotFound and not resume:
        raise ConfigError(f"a run named {config.name!r} already exists at {path}/{config.name} (it has checkpoints). "
                          "Pass --resume to continue it, choose another name, or delete it to start over")


def start_tracking(config: LoraPipelineConfig, pipeline: str, model: str, resume: bool, out: Path):
    """The run's MLflow run (the same one again on --resume, remembered in the run folder)."""
    from safelatent.evaluation.harness import git_commit
    from safelatent.tracking import Tracker

    marker = out / "mlflow_run_id"
    run_id = marker.read_text().strip() if resume and marker.is_file() else None
    tracker = Tracker.start(config.tracking, config.name, run_id=run_id)
    marker.write_text(tracker.run_id)
    if run_id is None:
        tracker.log_params(config.model_dump(mode="json"))
        tracker.set_tags({"pipeline": pipeline, "config_hash": config_hash(config), "commit": git_commit(),
                          "starting_model": model})
    return tracker


def train_on_ray(config: LoraPipelineConfig, loop: Callable[[dict], Any], loop_config: dict, resume: bool,
                 console: Console):
    """Run the worker loop with Ray Train; returns the TrainOutcome (its checkpoint holds the trained adapters)."""
    from cluster.train import run_training

    storage = training_storage(config)
    console.print(f"training on {config.train.workers} Ray Train worker(s); state and checkpoints in "
                  f"{storage}/{config.name}", highlight=False)
    return run_training(loop, loop_config, name=config.name, settings=config.train, storage=storage, resume=resume,
                        local_dir=config.out_dir() / "downloaded_checkpoint")


def export_student(model: str, student: StudentSettings, checkpoint: Path, out: Path) -> Path:
    """The trained adapters merged into a plain copy of the starting model, saved as a Hugging Face directory."""
    from safelatent.models.policy import PolicySettings, export_policy, load_policy, load_trainable_state

    loaded = load_policy(model, PolicySettings(dtype="float32", device="cpu", lora=student.lora), trainable=True)
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    load_trainable_state(loaded.model, state["weights"])
    return export_policy(loaded.model, loaded.tokenizer, out)


def evaluate(model: str, world_dir: Path, settings: EvaluationSettings, out: Path,
             against: str | None = None) -> dict[str, Any]:
    """`safelatent eval` of `model` on the configured split; the results.json contents."""
    from safelatent.evaluation.harness import EvalConfig, run_eval

    directory = run_eval(EvalConfig(model=model, against=against, data=f"microworld:{world_dir}:{settings.split}",
                                    out=out, limit=settings.limit, max_new_tokens=settings.max_new_tokens,
                                    batch_size=settings.batch_size, seed=settings.seed, device=settings.device),
                         console=Console(stderr=True, quiet=True))
    return json.loads((directory / "results.json").read_text())


def finish_tracking(tracker, config: LoraPipelineConfig, result: LoraRunResult, metrics: dict[str, float],
                    artifacts: list[Path], description: str) -> None:
    """Log the final figures and files, log the model and register it; marks the MLflow run finished."""
    status = "FAILED"
    try:
        tracker.log_metrics(metrics, config.student.steps)
        for path in artifacts:
            if path.exists():
                tracker.log_artifact(path, "report")
        tracker.log_artifacts(result.model_dir, "model")
        if config.tracking.registered_model:
            version = tracker.register_model(config.tracking.registered_model, "model", description)
            result.registered = f"{config.tracking.registered_model} version {version}"
        status = "FINISHED"
    finally:
        tracker.finish(status)
    result.tracking_run = tracker.url()


# -- worker ---------------------------------------------------------------------------------------------------------

@dataclass
class Student:
    """A worker's LoRA student: the peft model, what the loss runs through (DDP or the model), the optimiser."""

    model: torch.nn.Module
    tokenizer: Any
    trained: torch.nn.Module
    optimizer: torch.optim.Optimizer
    start_step: int


def build_student(loop_config: dict) -> Student:
    """Load the starting model with fresh adapters, restore the latest checkpoint if there is one, wrap in DDP."""
    from cluster.train import device, restore
    from safelatent.methods.distributed import world_size
    from safelatent.models.policy import PolicySettings, load_policy, load_trainable_state

    student = StudentSettings.model_validate(loop_config["student"])
    if student.threads:
        torch.set_num_threads(student.threads)
    torch.manual_seed(loop_config["seed"])
    where = device()
    loaded = load_policy(loop_config["model"], PolicySettings(dtype=student.dtype, device=str(where.type),
                                                              lora=student.lora), trainable=True)
    model = loaded.model.to(where)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=student.learning_rate,
                                  weight_decay=student.weight_decay)
    state = restore(lambda directory: torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False))
    start_step = 0
    if state is not None:
        load_trainable_state(model, state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"] + 1
    trained: torch.nn.Module = model
    if world_size() > 1:
        device_ids = [where.index] if where.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return Student(model=model, tokenizer=loaded.tokenizer, trained=trained, optimizer=optimizer,
                   start_step=start_step)


def saver(student: Student, step: int) -> Callable[[Path], None]:
    """What rank 0 writes into a checkpoint: the adapters, the optimiser and the step."""
    from safelatent.models.policy import trainable_state

    def save(directory: Path) -> None:
        torch.save({"weights": trainable_state(student.model), "optimizer": student.optimizer.state_dict(),
                    "step": step}, directory / STATE_FILE)

    return save


def rank_slice(items: list, count: int, seed: int, step: int, stream: str) -> list:
    """This rank's `count` items for a step: a seeded draw (the same on a resumed run) split across ranks."""
    import random

    from cluster.train import worker_rank, world_size

    if not items:
        raise ValueError(f"no {stream} items to draw from")
    rng = random.Random(step_seed(seed, step, stream))
    drawn = [items[rng.randrange(len(items))] for _ in range(count * world_size())]
    rank = worker_rank()
    return drawn[rank * count:(rank + 1) * count]


class StepLog:
    """Rank 0's MLflow logging of per-step metrics into the driver's run (the tracking URI is passed explicitly)."""

    def __init__(self, loop_config: dict):
        from cluster.train import worker_rank
        from safelatent.tracking import Tracker, TrackingSettings

        self.tracker = None
        if worker_rank() == 0 and loop_config.get("mlflow_run_id"):
            settings = TrackingSettings.model_validate(loop_config["tracking"])
            self.tracker = Tracker.start(settings, loop_config["name"], run_id=loop_config["mlflow_run_id"])
        self.started = time.perf_counter()

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics({**metrics, "seconds": time.perf_counter() - self.started}, step)


def checkpoint_due(step: int, student: StudentSettings) -> bool:
    return (step + 1) % student.checkpoint_every == 0 or step + 1 == student.steps
