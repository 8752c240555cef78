"""The sweep's driver: prepare the trials' shared inputs, run Ray Tune, then pick, measure, register and draw.

See pipelines/tune.py for the algorithm box and the config.
"""

import json
import math
import signal
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ray import tune
from rich.console import Console

from cluster.connect import connected, dashboard_url
from cluster.placement import check_fits, role_bundles, total_demand
from pipelines.ppo_engine import PPOEngine
from pipelines.tune import (
    SweepError,
    SweepResult,
    TrialOutcome,
    TuneConfig,
    absolute,
    absolute_tracking_uri,
    chdir_off,
    default_value,
    finite,
    summary_table,
    trial_config,
    write_summary,
)
from pipelines.tune_trial import run_trial, trial_dirname
from safelatent.config import config_hash
from safelatent.data.microworld import build_microworld, content_hash
from safelatent.evaluation.harness import EvalConfig, evaluation_hash, git_commit, run_eval
from safelatent.tracking import Tracker
from safelatent.tuning.objective import pareto_front, rank
from safelatent.tuning.plots import write_parallel_coordinates, write_pareto_plot
from safelatent.tuning.space import Parameter

STATE_DIR = "state"  # Tune's experiment folder under the sweep's folder
PARENT_RUN_FILE = "parent_run.json"
CHAMPION = "champion"


class SweepInterrupted(SweepError):
    """The search stopped before every trial ended (Ctrl-C); Tune saved its state for --resume."""


INTERRUPTED = threading.Event()


class InterruptWatch(tune.Callback):
    """Notes Ctrl-C. Tune catches the signal itself (it stops the trials, saves its state and returns from
    fit() as if done), so the sweep would otherwise not know it was interrupted."""

    def setup(self, **info: Any) -> None:
        INTERRUPTED.clear()
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGUSR1):
            tune_handler = signal.getsignal(signum)

            def noted(number: int, frame: Any, handler: Any = tune_handler) -> None:
                INTERRUPTED.set()
                if callable(handler):
                    handler(number, frame)

            signal.signal(signum, noted)


class Sweep:
    def __init__(self, config: TuneConfig, console: Console):
        self.config = config
        self.console = console
        self.out = config.out_dir().resolve()
        self.default = trial_config(config.pipeline_class(), config.trial_raw(), {})

    # -- the run ----------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> SweepResult:

        config = self.config
        chdir_off()
        state = self.out / STATE_DIR
        restoring = tune.Tuner.can_restore(str(state))
        if restoring and not resume:
            raise SweepError(f"{self.out} already holds sweep {config.name!r}; pass --resume to continue it, or "
                             "choose another name=")
        if resume and not restoring:
            self.console.print(f"--resume: no sweep state under {state} yet; starting the sweep")
        self.out.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            cluster = stack.enter_context(connected(config.address))
            self.console.print(f"ray: CPU {cluster.get('CPU', 0):g}, GPU {cluster.get('GPU', 0):g}"
                               + (f"; dashboard {dashboard_url()}" if dashboard_url() else ""))
            roles = self.default.resources.roles()
            check_fits(roles, cluster)
            base_model = PPOEngine(self.default, self.console).resolve_model()
            judges = PPOEngine(self.default, self.console).resolve_judges()
            baseline = self.baseline_accuracy(base_model)
            parent = self.parent_run(restoring)
            status = "FAILED"
            try:
                grid = self.tuner(base_model, judges, baseline, parent.run_id, roles, cluster, restoring).fit()
                self.check_complete(grid)
                result = self.conclude(grid, parent, baseline)
                status = "FINISHED"
            except (KeyboardInterrupt, SweepInterrupted):
                status = "KILLED"
                raise
            finally:
                parent.finish(status)
        result.tracking_run = parent.url()
        write_summary(result, config)
        self.console.print(summary_table(result, config))
        return result

    # -- inputs -----------------------------------------------------------------------------------------
    def baseline_accuracy(self, base_model: str) -> float | None:
        """The base model's task accuracy with the trials' evaluation settings (cached by evaluation hash)."""
        if self.config.objective.penalty == 0:
            return None
        settings = self.default.evaluation
        eval_config = EvalConfig(model=base_model, data=settings.data, limit=settings.limit,
                                 max_new_tokens=settings.max_new_tokens, seed=self.default.seed,
                                 out=self.out / "baseline", device=self.default.policy.device,
                                 dtype=self.default.policy.dtype)
        results_file = self.out / "baseline" / "results.json"
        cached = json.loads(results_file.read_text()) if results_file.is_file() else {}
        if cached.get("config_hash") != evaluation_hash(eval_config):
            self.console.print(f"baseline: evaluating the base model {base_model} on {settings.data}")
            run_eval(eval_config, console=self.console)
            cached = json.loads(results_file.read_text())
        accuracy = cached["metrics"]["task_accuracy"]["value"]
        self.console.print(f"baseline task accuracy {accuracy:.1%} on {settings.data}: a trial may lose "
                           f"{self.config.objective.max_accuracy_drop:.0%} before its score is penalised")
        return accuracy

    def parent_run(self, restoring: bool) -> Tracker:
        """The sweep's MLflow run; a resumed sweep reopens the one it started."""
        record = self.out / PARENT_RUN_FILE
        run_id = json.loads(record.read_text())["run_id"] if restoring and record.is_file() else None
        tracking = self.config.tracking.model_copy(update={"uri": absolute_tracking_uri(self.config.tracking.uri)})
        parent = Tracker.start(tracking, self.config.name, run_id=run_id)
        if run_id is None:
            record.write_text(json.dumps({"run_id": parent.run_id}) + "\n")
            parent.log_params({"sweep": self.config.model_dump(mode="json")})
            parent.set_tags({"pipeline": "tune", "tuned": self.config.tuned, "config_hash": config_hash(self.config),
                             "commit": git_commit()})
        return parent

    def trial_base(self, base_model: str, judges: str, parent_run_id: str) -> dict[str, Any]:
        """The default trial's raw config with what every trial shares: the resolved base model and judges,
        absolute paths, the sweep's tracking (nested under its run, nothing registered per trial)."""
        base = self.config.trial_raw()
        base.update({"model": absolute(base_model), "base_model_config": None, "judges": absolute(judges),
                     "judges_config": None, "out_root": str(self.out / "trials"), "address": None})
        base["tracking"] = {**base["tracking"], "uri": absolute_tracking_uri(self.config.tracking.uri),
                            "experiment": self.config.tracking.experiment, "registered_model": None,
                            "parent_run_id": parent_run_id}
        base["checkpoint"]["dir"] = absolute(base["checkpoint"]["dir"])
        if self.config.scheduler.kind == "pbt":  # PBT exploits the checkpoint taken at each interval
            base["checkpoint"]["every"] = self.config.scheduler.perturbation_interval
        return base

    def tuner(self, base_model: str, judges: str, baseline: float | None, parent_run_id: str,
              roles: dict, cluster: dict, restoring: bool) -> Any:

        config = self.config
        setup = {"tuned": config.tuned, "sweep": config.name,
                 "base": self.trial_base(base_model, judges, parent_run_id),
                 "objective": config.objective.model_dump(mode="json"), "baseline_accuracy": baseline,
                 # The trial's own process fits the head and evaluates while its actors wait: it may use the
                 # trial's CPUs then.
                 "threads": max(1, round(total_demand(roles).get("CPU", 1.0)))}
        bundles, _ = role_bundles(roles)
        # The trial's own process reserves nothing; its roles' bundles are the trial's placement group.
        trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                        tune.PlacementGroupFactory([{}, *bundles],
                                                                   strategy=self.default.resources.strategy))
        state = self.out / STATE_DIR
        if restoring:
            self.console.print(f"resuming sweep {config.name!r} from {state}")
            return tune.Tuner.restore(str(state), trainable, resume_unfinished=True, resume_errored=False)
        concurrent = config.search.max_concurrent or fitting_trials(total_demand(roles), cluster)
        self.console.print(f"sweep {config.name!r}: {config.search.num_samples} trials of {config.tuned}, "
                           f"{concurrent} at a time ({_demand(total_demand(roles))} each)")
        return tune.Tuner(
            trainable, param_space={key: tune_domain(parameter) for key, parameter in config.space.items()},
            tune_config=tune.TuneConfig(search_alg=self.search_algorithm(concurrent), scheduler=self.scheduler(),
                                        num_samples=config.search.num_samples, max_concurrent_trials=concurrent,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=STATE_DIR, storage_path=str(self.out), verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      callbacks=[InterruptWatch()]))

    def search_algorithm(self, concurrent: int) -> Any:
        search = self.config.search
        defaults = self.default.model_dump(mode="json")
        points = [{key: default_value(defaults, key) for key in self.config.space}] if search.include_default else None
        if search.algorithm == "random":
            from ray.tune.search import BasicVariantGenerator

            return BasicVariantGenerator(points_to_evaluate=points, random_state=search.seed, max_concurrent=concurrent)
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        metric, mode = (["harmlessness", "task_accuracy"], ["max", "max"]) if search.multi_objective else ("score",
                                                                                                          "max")
        return OptunaSearch(metric=metric, mode=mode, points_to_evaluate=points,
                            sampler=optuna.samplers.TPESampler(seed=search.seed))

    def scheduler(self) -> Any:
        settings = self.config.scheduler
        if settings.kind == "fifo":
            return None
        if settings.kind == "pbt":
            from ray.tune.schedulers import PopulationBasedTraining

            # synch: every trial reaches the interval before anyone exploits, so decisions compare equals.
            return PopulationBasedTraining(
                time_attr="training_iteration", metric=settings.metric, mode="max",
                perturbation_interval=settings.perturbation_interval, synch=True,
                hyperparam_mutations={key: tune_domain(self.config.space[key]) for key in settings.mutate},
                quantile_fraction=settings.quantile_fraction, resample_probability=settings.resample_probability)
        from ray.tune.schedulers import ASHAScheduler

        # The last report (the evaluation) is one iteration after the last step.
        return ASHAScheduler(time_attr="training_iteration", metric=settings.metric, mode="max",
                             max_t=self.default.steps + 1, grace_period=settings.grace_period,
                             reduction_factor=settings.reduction_factor)

    # -- after the search -------------------------------------------------------------------------------
    def check_complete(self, grid: Any) -> None:
        """Tune returns normally after Ctrl-C, with its state saved; such a sweep must not be concluded."""
        expected = self.config.search.num_samples * math.prod(
            len(parameter.values()) for parameter in self.config.space.values() if parameter.kind == "grid")
        ended = grid.num_terminated + grid.num_errors
        if INTERRUPTED.is_set() or len(grid) < expected or ended < len(grid):
            raise SweepInterrupted(f"sweep {self.config.name!r} was interrupted with {ended} of {expected} trials "
                                   f"ended; its state is saved under {self.out / STATE_DIR}: run the same command "
                                   "with --resume to continue it")

    def conclude(self, grid: Any, parent: Tracker, baseline: float | None) -> SweepResult:
        config = self.config
        trials = [self.outcome(result) for result in grid]  # in the order Tune created them
        defaults = self.default.model_dump(mode="json")
        if config.search.include_default:
            default = next((trial for trial in trials
                            if all(_same(trial.config.get(key), default_value(defaults, key)) for key in config.space)),
                           None)
            if default is not None:
                default.default = True
        else:
            default = None
        self.record_failures(trials, parent)
        evaluated = [trial for trial in trials if trial.status == "evaluated"]
        result = SweepResult(out_dir=self.out, trials=trials, best=None, default=default)
        front = pareto_front([(trial.metrics["harmlessness"], trial.metrics["task_accuracy"]) for trial in evaluated])
        result.pareto = [evaluated[index].trial for index in front]
        if not evaluated:
            self.console.print("[red]no trial finished its evaluation; nothing to register[/red]")
            self.log_sweep(parent, result, baseline)
            return result
        result.best = max(evaluated, key=lambda trial: rank(trial.score, trial.metrics))
        result.best.best = True
        for trial in {result.best.trial: result.best, **({default.trial: default} if default and
                                                          default.status == "evaluated" else {})}.values():
            result.final[trial.trial] = self.final_evaluation(trial)
        self.register(result, parent)
        self.log_sweep(parent, result, baseline)
        return result

    def outcome(self, result: Any) -> TrialOutcome:
        trial = Path(result.path).name.removeprefix("trial_")
        metrics = result.metrics or {}
        sample = {key: value for key, value in (result.config or {}).items() if key in self.config.space}
        if result.error is not None:
            return TrialOutcome(trial=trial, config=sample, status="failed", error=_error_line(result.error),
                                mlflow_run_id=metrics.get("mlflow_run_id"))
        if not metrics.get("evaluated"):
            return TrialOutcome(trial=trial, config=sample, status="stopped")
        values = {name: float(metrics[name]) for name in ("harmlessness", "task_accuracy", "over_refusal")
                  if finite(metrics.get(name))}
        return TrialOutcome(trial=trial, config=sample, status="evaluated", metrics=values,
                            score=float(metrics["score"]), model_dir=metrics.get("model_dir"),
                            mlflow_run_id=metrics.get("mlflow_run_id"))

    def record_failures(self, trials: list[TrialOutcome], parent: Tracker) -> None:
        """A failed trial's child run says why; a trial that failed before its run began gets one that does."""
        client = parent.client
        for trial in trials:
            if trial.status != "failed":
                continue
            name = f"{self.config.name}-{trial.trial}"
            runs = client.search_runs([parent_experiment(parent)], f"tags.mlflow.parentRunId = '{parent.run_id}' "
                                                                   f"and attributes.run_name = '{name}'")
            if runs:
                child = Tracker(client, runs[0].info.run_id, parent.uri)
            else:
                child = Tracker.start(self.config.tracking.model_copy(update={
                    "uri": parent.uri, "parent_run_id": parent.run_id}), name)
                child.log_params({"sampled": trial.config})
            child.set_tags({"error": trial.error, "trial": trial.trial})
            child.finish("FAILED")
            trial.mlflow_run_id = child.run_id
            self.console.print(f"[yellow]trial {trial.trial} failed: {trial.error}[/yellow]")

    def final_evaluation(self, trial: TrialOutcome) -> dict[str, Any]:
        """The trial's model on the report split (not the split it was selected on)."""
        settings, evaluation = self.config.final_evaluation, self.default.evaluation
        out = self.out / "final" / trial.trial
        eval_config = EvalConfig(model=str(trial.model_dir), data=settings.data, limit=settings.limit, out=out,
                                 max_new_tokens=evaluation.max_new_tokens, seed=self.default.seed,
                                 device=self.default.policy.device, dtype=self.default.policy.dtype)
        run_eval(eval_config, console=self.console)
        return json.loads((out / "results.json").read_text())["metrics"]

    def register(self, result: SweepResult, parent: Tracker) -> None:
        """Register the best trial's model with its lineage; `champion` only if it passes the gate on the
        report split."""
        config, best = self.config, result.best
        assert best is not None
        name = config.tracking.registered_model
        result.gate_failures = config.gate.failures(result.final[best.trial])
        if not name:
            return
        child = Tracker(parent.client, best.mlflow_run_id, parent.uri)
        version = child.register_model(name, "model", f"best of sweep {config.name} (trial {best.trial})")
        result.registered = f"{name} version {version}"
        result.champion = not result.gate_failures
        child.promote(name, version, CHAMPION if result.champion else None, self.lineage(best, child))
        if result.champion:
            self.console.print(f"[green]{name} version {version} passed the release gate: alias @{CHAMPION}[/green]")
        else:
            self.console.print(f"[yellow]{name} version {version} is registered but not @{CHAMPION}; the release "
                               "gate failed on " + config.final_evaluation.data + ":[/yellow]\n  "
                               + "\n  ".join(result.gate_failures))

    def lineage(self, trial: TrialOutcome, child: Tracker) -> dict[str, Any]:
        tags = child.client.get_run(child.run_id).data.tags
        kept = {key: value for key, value in tags.items()
                if key in ("config_hash", "commit", "base_model", "judges", "pipeline") or key.startswith("judge.")}
        pipeline_config = trial_config(self.config.pipeline_class(), self.default.model_dump(mode="json"), trial.config)
        world = build_microworld(pipeline_config.microworld)
        return {**kept, "data.microworld_config_hash": config_hash(pipeline_config.microworld),
                "data.microworld_content_hash": content_hash(world), "data.train_split": pipeline_config.prompts.split,
                "data.selection": self.default.evaluation.data, "data.report": self.config.final_evaluation.data,
                "sweep": self.config.name, "sweep_config_hash": config_hash(self.config), "trial": trial.trial,
                "sampled": json.dumps(trial.config, sort_keys=True)}

    def log_sweep(self, parent: Tracker, result: SweepResult, baseline: float | None) -> None:
        metrics: dict[str, float] = {"trials": len(result.trials),
                                     "trials_failed": sum(trial.status == "failed" for trial in result.trials),
                                     "trials_stopped": sum(trial.status == "stopped" for trial in result.trials)}
        if baseline is not None:
            metrics["baseline_task_accuracy"] = baseline
        for role, trial in (("best", result.best), ("default", result.default)):
            if trial is None or trial.status != "evaluated":
                continue
            metrics[f"{role}/score"] = trial.score
            metrics.update({f"{role}/{name}": value for name, value in trial.metrics.items()})
            for name, entry in result.final.get(trial.trial, {}).items():
                if isinstance(entry, dict) and finite(entry.get("value")):
                    metrics[f"{role}/final/{name}"] = entry["value"]
        parent.log_metrics(metrics, 0)
        parent.set_tags({"best_trial": result.best.trial if result.best else "none",
                         "registered": result.registered or "no", "champion": result.champion,
                         "gate": "passed" if result.best and not result.gate_failures else
                         "; ".join(result.gate_failures) or "not run"})
        rows = [trial.row() for trial in result.trials]
        if any(trial.status == "evaluated" for trial in result.trials):
            write_pareto_plot(rows, self.out / "pareto.png", title=f"sweep {self.config.name}\nharmlessness against "
                                                                     f"task accuracy ({self.default.evaluation.data})")
            write_parallel_coordinates(rows, list(self.config.space), self.out / "parallel_coordinates.png")
            parent.log_artifact(self.out / "pareto.png", "plots")
            parent.log_artifact(self.out / "parallel_coordinates.png", "plots")
        (self.out / "trials.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
        parent.log_artifact(self.out / "trials.json")


def tune_domain(parameter: Parameter) -> Any:

    values = parameter.values()
    return {"uniform": lambda: tune.uniform(*values), "loguniform": lambda: tune.loguniform(*values),
            "choice": lambda: tune.choice(values), "grid": lambda: tune.grid_search(values)}[parameter.kind]()


def fitting_trials(demand: dict[str, float], cluster: dict[str, float]) -> int:
    """How many trials with this demand fit in the cluster at once (at least one: check_fits ran before)."""
    counts = [math.floor(cluster.get(name, 0.0) / amount + 1e-9) for name, amount in demand.items() if amount > 0]
    return max(1, min(counts, default=1))


def parent_experiment(parent: Tracker) -> str:
    return parent.client.get_run(parent.run_id).info.experiment_id


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _demand(demand: dict[str, float]) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(demand.items()))


def _error_line(error: BaseException) -> str:
    """The root cause of a trial's failure in one line (Tune wraps it in its own error)."""
    cause = error
    while getattr(cause, "cause", None) is not None or cause.__cause__ is not None:
        cause = getattr(cause, "cause", None) or cause.__cause__
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]
