"""Ray Tune sweeps over a pipeline: config checks before anything starts, a sweep end to end on tiny models
(MLflow parent and child runs, a failed trial recorded, the best registered with its lineage, the gate,
the plots), and a sweep interrupted and resumed through Tune restore."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.tune import SweepError, TuneConfig, run
from safelatent.config import load_config
from safelatent.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def tiny_sweep(tmp_path, model_dir, judges_dir, **changes):
    """A sweep config over the sls-rlaif pipeline on tiny models, as a YAML file."""
    raw = {
        "name": "tiny-sweep", "tuned": "sls-rlaif", "pipeline_config": str(REPO / "pipelines/configs/sls_rlaif.yaml"),
        "trial": {"model": str(model_dir), "base_model_config": None, "judges": str(judges_dir),
                  "judges_config": None, "steps": 2, "rollout.prompts_per_step": 4, "rollout.samples_per_prompt": 2,
                  "rollout.max_new_tokens": 8, "ppo.minibatch_size": 4, "ppo.epochs": 1,
                  "evaluation.data": "microworld:validation", "evaluation.limit": 2, "evaluation.max_new_tokens": 8,
                  "head.facets": 1, "head.examples_per_kind": 8, "head.adversarial_steps": 5,
                  "resources.rollout.num_cpus": 0.25, "resources.reward.num_cpus": 0.25,
                  "resources.reference.num_cpus": 0.25, "resources.learner.num_cpus": 0.25,
                  "microworld.benign_per_family": {"train": 10, "validation": 4, "test": 10},
                  "microworld.harmful_per_category": {"train": 4, "validation": 4, "test": 4},
                  "microworld.jailbreaks_per_wrapper": {"train": 2, "validation": 2, "test": 2}},
        "space": {"head.layer": {"grid": ["auto", 7]}, "ppo.kl.beta": {"grid": [1.0]}},
        "search": {"algorithm": "random", "num_samples": 1, "include_default": False, "max_concurrent": 1},
        "final_evaluation": {"data": "microworld:test", "limit": 2},
        "gate": {"min_harmlessness": 0.0, "max_over_refusal": 1.0},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "registered_model": "tiny-tuned"},
        "out_root": str(tmp_path / "tune"),
    }
    for key, value in changes.items():
        raw[key] = value
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_shipped_sweep_config_is_valid():
    config = load_config(TuneConfig, REPO / "pipelines/configs/tune_sls.yaml")
    assert config.search.num_samples >= 8 and config.search.include_default
    assert {"ppo.kl.beta", "head.layer", "head.facets", "head.lambda_move", "head.lambda_keep",
            "optimizer.learning_rate"} <= set(config.space)


@pytest.mark.parametrize(("change", "message"), [
    ({"space": {"head.facet": {"choice": [1, 2]}}}, r"head\.facet = 1"),
    ({"space": {"ppo.kl.beta": {"grid": [0.5, 1.0]}}, "search": {"algorithm": "optuna"}}, "needs search.algorithm"),
    ({"space": {"ppo.kl.beta": {"uniform": [0.1, 0.5]}}, "search": {"include_default": True}},
     r"outside the space: ppo\.kl\.beta = 1\.0"),
    ({"space": {"resources.learners": {"choice": [1, 2]}}}, "cannot be tuned"),
    ({"space": {}}, "search space is empty"),
    ({"trial": {"evaluation.enabled": False}}, "evaluation.enabled must stay true"),
    ({"trial": {"stepz": 3}}, "stepz"),
])
def test_a_bad_sweep_config_fails_before_anything_starts(tmp_path, change, message):
    path = tiny_sweep(tmp_path, tmp_path, tmp_path, **change)
    with pytest.raises(ConfigError, match=message):
        load_config(TuneConfig, path)


def test_a_sweep_records_every_trial_registers_the_best_and_gates_the_champion(
        ray_cluster, tiny_llama_dir, tiny_judges_dir, tmp_path):
    config = load_config(TuneConfig, tiny_sweep(tmp_path, tiny_llama_dir, tiny_judges_dir))
    result = run(config)

    assert len(result.trials) == 2
    failed = next(trial for trial in result.trials if trial.status == "failed")
    assert failed.config["head.layer"] == 7 and "head.layer: layer 7 is out of range" in failed.error
    best = result.best
    assert best is not None and best.status == "evaluated" and best.config["head.layer"] == "auto"
    assert set(result.final[best.trial]) >= {"harmlessness", "task_accuracy"}
    assert result.pareto == [best.trial]

    client = MlflowClient(tracking_uri=config.tracking.uri)
    parent_id = result.tracking_run.rsplit(" ", 1)[-1]
    children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent_id}'")
    by_id = {child.info.run_id: child for child in children}
    assert set(by_id) == {best.mlflow_run_id, failed.mlflow_run_id}
    assert by_id[failed.mlflow_run_id].info.status == "FAILED" and "out of range" in by_id[
        failed.mlflow_run_id].data.tags["error"]
    good = by_id[best.mlflow_run_id]
    assert good.info.status == "FINISHED" and "eval/harmlessness" in good.data.metrics
    assert len(client.get_metric_history(best.mlflow_run_id, "reward")) == 2  # per-step metrics
    assert good.data.params["ppo.kl.beta"] == "1.0"

    version = client.get_model_version_by_alias("tiny-tuned", "champion")  # the gate is open in this config
    assert result.registered == f"tiny-tuned version {version.version}" and version.run_id == best.mlflow_run_id
    tags = version.tags
    assert {"config_hash", "commit", "base_model", "data.microworld_content_hash", "data.selection",
            "data.report", "sweep", "trial"} <= set(tags)
    assert any(key.startswith("judge.") for key in tags) and tags["data.selection"] == "microworld:validation"

    parent = client.get_run(parent_id)
    assert parent.data.tags["best_trial"] == best.trial and parent.data.metrics["trials_failed"] == 1
    artifacts = {item.path for item in client.list_artifacts(parent_id, "plots")}
    assert artifacts == {"plots/pareto.png", "plots/parallel_coordinates.png"}
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["best"]["trial"] == best.trial and summary["champion"] is True

    # The same sweep again without --resume is refused.
    with pytest.raises(SweepError, match="pass --resume"):
        run(config)


def test_an_interrupted_sweep_resumes_through_tune_restore_without_rerunning_finished_trials(
        tiny_llama_dir, tiny_judges_dir, tmp_path):
    """Also: a best trial that fails the release gate is registered without the champion alias."""
    path = tiny_sweep(tmp_path, tiny_llama_dir, tiny_judges_dir, space={"ppo.kl.beta": {"grid": [0.5, 1.0]}},
                      gate={"min_harmlessness": 1.0, "max_over_refusal": 0.0, "min_task_accuracy": 1.0})
    trials = tmp_path / "tune" / "tiny-sweep" / "trials"
    command = [str(Path(sys.executable).parent / "safelatent"), "tune", "-c", str(path)]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.monotonic() + 400
    started: list[Path] = []
    # One trial at a time: the second trial's folder appears once Tune has ended the first.
    while len(started) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(1)
        started = sorted(trials.glob("tiny-sweep-*")) if trials.is_dir() else []
    assert len(started) == 2, "the first trial did not end: " + (
        first.stdout.read().decode()[-3000:] if first.poll() is not None else "")
    finished = [started[0] / "summary.json"]
    assert finished[0].is_file()
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the middle of the sweep
    output = first.communicate(timeout=120)[0].decode()
    assert first.returncode != 0 and "run the same command with --resume" in output, output[-2000:]
    done_at = {summary: summary.stat().st_mtime_ns for summary in finished}

    refused = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "pass --resume" in refused.stderr

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming sweep 'tiny-sweep'" in resumed.stderr
    assert all(summary.stat().st_mtime_ns == mtime for summary, mtime in done_at.items()), "a finished trial re-ran"
    summary = json.loads((tmp_path / "tune" / "tiny-sweep" / "summary.json").read_text())
    assert sorted(trial["config"]["ppo.kl.beta"] for trial in summary["trials"]) == [0.5, 1.0]
    assert all(trial["status"] == "evaluated" for trial in summary["trials"])
    assert summary["registered"] == "tiny-tuned version 1" and summary["champion"] is False
    assert "is registered but not @champion" in resumed.stderr
    assert any("task_accuracy" in line and "short" in line for line in summary["gate_failures"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_registered_model("tiny-tuned").aliases == {}


def test_as_many_trials_run_at_once_as_the_cluster_fits():
    from pipelines.tune_driver import fitting_trials

    assert fitting_trials({"CPU": 1.5}, {"CPU": 2}) == 1
    assert fitting_trials({"CPU": 1.0, "GPU": 0.5}, {"CPU": 8, "GPU": 1}) == 2
    assert fitting_trials({"CPU": 0.5}, {"CPU": 2.0, "GPU": 4}) == 4


def test_the_search_algorithm_follows_the_config(tmp_path):
    """Optuna TPE on the scalar score, or on harmlessness and task accuracy together (Pareto); random search
    starts from the default config when asked to."""
    from rich.console import Console

    from pipelines.tune_driver import Sweep

    space = {"ppo.kl.beta": {"loguniform": [0.1, 3.0]}}
    single = load_config(TuneConfig, tiny_sweep(tmp_path, tmp_path, tmp_path, space=space,
                                                search={"algorithm": "optuna", "include_default": True}))
    searcher = Sweep(single, Console(quiet=True)).search_algorithm(1)
    assert (searcher.metric, searcher.mode) == ("score", "max")
    pareto = load_config(TuneConfig, tiny_sweep(tmp_path, tmp_path, tmp_path, space=space,
                                                search={"algorithm": "optuna", "multi_objective": True}))
    searcher = Sweep(pareto, Console(quiet=True)).search_algorithm(1)
    assert (searcher.metric, searcher.mode) == (["harmlessness", "task_accuracy"], ["max", "max"])
    random = load_config(TuneConfig, tiny_sweep(tmp_path, tmp_path, tmp_path, space=space,
                                                search={"algorithm": "random", "include_default": True}))
    searcher = Sweep(random, Console(quiet=True)).search_algorithm(1)
    assert searcher._points_to_evaluate == [{"ppo.kl.beta": 1.0}]


def test_pbt_continues_weak_trials_from_a_strong_one_with_perturbed_values(
        ray_cluster, tiny_llama_dir, tiny_judges_dir, tmp_path):
    config = load_config(TuneConfig, tiny_sweep(
        tmp_path, tiny_llama_dir, tiny_judges_dir,
        space={"ppo.kl.beta": {"grid": [0.05, 3.0]}, "optimizer.learning_rate": {"loguniform": [1e-4, 1e-2]}},
        search={"algorithm": "random", "num_samples": 1, "include_default": False},  # both trials at once
        scheduler={"kind": "pbt", "perturbation_interval": 1, "mutate": ["optimizer.learning_rate"],
                   "quantile_fraction": 0.5}))
    result = run(config)
    assert [trial.status for trial in result.trials] == ["evaluated", "evaluated"]
    client = MlflowClient(tracking_uri=config.tracking.uri)
    parent_id = result.tracking_run.rsplit(" ", 1)[-1]
    children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent_id}'")
    first_steps = {run.info.run_id: min((point.step for point in client.get_metric_history(run.info.run_id,
                                                                                            "reward")), default=None)
                   for run in children}
    # Two trials started at step 1; each exploit continued a trial from the other's checkpoint in an MLflow run
    # of its own, with its inputs logged, past the step it was restored at.
    assert sum(step == 1 for step in first_steps.values()) == 2, first_steps
    adopted = [run for run in children if first_steps[run.info.run_id] != 1]
    assert adopted, first_steps
    assert all("optimizer.learning_rate" in run.data.params for run in adopted)
    assert all(first_steps[run.info.run_id] in (None, 2) for run in adopted), first_steps


def test_pbt_only_perturbs_what_can_change_mid_run(tmp_path):
    base = {"space": {"head.facets": {"choice": [1, 2]}, "ppo.kl.beta": {"uniform": [0.5, 2.0]}},
            "search": {"algorithm": "random"}}
    for scheduler, message in (({"kind": "pbt", "mutate": ["head.facets"]}, "cannot change in the middle"),
                               ({"kind": "pbt", "mutate": ["optimizer.learning_rate"]}, "not in the space"),
                               ({"kind": "pbt", "mutate": ["ppo.kl.beta"], "perturbation_interval": 5},
                                "must be below the trials' steps")):
        with pytest.raises(ConfigError, match=message):
            load_config(TuneConfig, tiny_sweep(tmp_path, tmp_path, tmp_path, scheduler=scheduler, **base))
    with pytest.raises(ConfigError, match=r"set search\.algorithm random"):
        load_config(TuneConfig, tiny_sweep(tmp_path, tmp_path, tmp_path, scheduler={"kind": "pbt"},
                                           space=base["space"], search={"algorithm": "optuna"}))
