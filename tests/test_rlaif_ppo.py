"""The rlaif-ppo pipeline on a local Ray cluster: tiny random policy, tiny trained judges, a few steps each.

Every run uses per-step seeds, so runs with the same seed must produce the same metrics step for step:
the resume and fault tests compare against one uninterrupted run.
"""

import json
import math

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from cluster.placement import ResourceDemandError
from pipelines.rlaif_ppo import RLAIFPPOConfig, run
from safelatent import checkpoint
from safelatent.config import load_config
from safelatent.errors import NonFiniteLossError

STEPS = 4
COMPARED = ("reward", "kl_to_ref", "policy_loss", "approx_kl", "response_length")


@pytest.fixture
def make_config(tiny_llama_dir, tiny_judges_dir, tmp_path):
    def make(*overrides: str) -> RLAIFPPOConfig:
        return load_config(RLAIFPPOConfig, None, [
            f"model={tiny_llama_dir}", "base_model_config=null", f"judges={tiny_judges_dir}", "judges_config=null",
            f"steps={STEPS}", f"out_root={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
            "ppo.minibatch_size=4", "ppo.epochs=1", "optimizer.learning_rate=1e-3", "checkpoint.every=2",
            "evaluation.enabled=false",
            "microworld.benign_per_family={train: 10, validation: 0, test: 10}",
            "microworld.harmful_per_category={train: 4, validation: 0, test: 4}",
            "microworld.jailbreaks_per_wrapper={train: 2, validation: 0, test: 2}",
            *overrides])
    return make


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tiny_llama_dir, tiny_judges_dir, tmp_path_factory):
    """The reference run the resume and fault tests must reproduce."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    config = load_config(RLAIFPPOConfig, None, [
        f"model={tiny_llama_dir}", "base_model_config=null", f"judges={tiny_judges_dir}", "judges_config=null",
        f"steps={STEPS}", f"out_root={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
        "ppo.minibatch_size=4", "ppo.epochs=1", "optimizer.learning_rate=1e-3", "checkpoint.every=2",
        "evaluation.enabled=true", "evaluation.limit=2", "evaluation.max_new_tokens=8",
        "microworld.benign_per_family={train: 10, validation: 0, test: 10}",
        "microworld.harmful_per_category={train: 4, validation: 0, test: 4}",
        "microworld.jailbreaks_per_wrapper={train: 2, validation: 0, test: 2}"])
    return config, run(config)


def _same_history(left: list[dict], right: list[dict]) -> None:
    assert [entry["step"] for entry in left] == [entry["step"] for entry in right]
    for a, b in zip(left, right, strict=True):
        for name in COMPARED:
            assert math.isclose(a[name], b[name], rel_tol=1e-4, abs_tol=1e-6), (a["step"], name, a[name], b[name])


def test_a_run_trains_exports_evaluates_and_tracks_everything(uninterrupted):
    config, result = uninterrupted
    assert result.steps_done == STEPS and len(result.history) == STEPS
    last = result.history[-1]
    for name in ("reward", "reward_model", "harm_probability", "kl_to_ref", "approx_kl", "clipfrac", "entropy",
                 "explained_variance", "response_length", "samples_per_second", "tokens_per_second", "time/generate",
                 "time/score", "time/reference", "time/learn", "time/weight_sync", "time/idle"):
        assert name in last, name
    assert any(entry["kl_to_ref"] != 0 for entry in result.history[1:]), "the policy never moved from the reference"

    assert (result.model_dir / "config.json").is_file()
    assert set(result.evaluation) >= {"harmlessness", "task_accuracy", "over_refusal"}
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["model"] == str(result.model_dir)
    assert [step for step, _ in checkpoint.list_checkpoints(config.checkpoint_root())] == [2, 4]

    client = MlflowClient(tracking_uri=config.tracking.uri)
    run_id = result.tracking_run.rsplit(" ", 1)[-1]
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["ppo.estimator"] == "gae"
    tags = mlflow_run.data.tags
    assert tags["judge.constitution"] and tags["judge.labeler"] and tags["judge.reward_model"]
    assert len(client.get_metric_history(run_id, "reward")) == STEPS
    assert "eval/harmlessness" in mlflow_run.data.metrics
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    assert {"model", "eval"} <= artifacts


def test_an_interrupted_run_resumes_from_s3_to_the_same_metrics(uninterrupted, make_config, s3_endpoint,
                                                                  aws_test_credentials, monkeypatch):
    import boto3

    monkeypatch.setenv("SAFELATENT_S3_ENDPOINT_URL", s3_endpoint)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="ckpt")
    config = make_config("checkpoint.dir=s3://ckpt/runs/resume")

    def interrupt(step, metrics, roles):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config, on_step=interrupt)
    assert [step for step, _ in checkpoint.list_checkpoints("s3://ckpt/runs/resume")] == [2]
    with pytest.raises(Exception, match="--resume"):
        run(config)  # checkpoints exist: a fresh start would clobber them, so it refuses

    resumed = run(config, resume=True)
    assert resumed.steps_done == STEPS
    _same_history(resumed.history, uninterrupted[1].history)
    client = MlflowClient(tracking_uri=config.tracking.uri)
    run_id = resumed.tracking_run.rsplit(" ", 1)[-1]
    assert [m.step for m in client.get_metric_history(run_id, "reward")] == [1, 2, 3, 4]


def test_killed_rollout_and_reward_actors_are_restarted_and_the_step_retried(uninterrupted, make_config):
    killed = []

    def kill(step, metrics, roles):
        if step == 1:  # step 2's rollouts are already in flight
            ray.kill(roles["rollout"].workers[0], no_restart=False)
            ray.kill(roles["reward"].scorers[0], no_restart=False)
            killed.append(step)

    result = run(make_config(), on_step=kill)
    assert killed == [1]
    assert result.steps_done == STEPS
    _same_history(result.history, uninterrupted[1].history)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(ray_cluster, make_config):
    config = make_config()

    def poison(step, metrics, roles):
        if step == 2:
            def fill_with_nan(learner_worker):
                with torch.no_grad():
                    for parameter in learner_worker.learner.policy.parameters():
                        parameter.fill_(float("nan"))
            ray.get(roles["learner"].workers[0].__ray_call__.remote(fill_with_nan))

    with pytest.raises(NonFiniteLossError, match="not finite"):
        run(config, on_step=poison)
    assert [step for step, _ in checkpoint.list_checkpoints(config.checkpoint_root())] == [2]
    client = MlflowClient(tracking_uri=config.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("safelatent").experiment_id])
    assert runs[0].info.status == "FAILED"


def test_two_ddp_lora_learners_with_async_rollout_stay_in_sync(ray_cluster, make_config):
    weights = []

    def compare_ranks(step, metrics, roles):
        states = [ray.get(ray.get(worker.publish.remote())[0])["weights"] for worker in roles["learner"].workers]
        weights.append(all(torch.equal(states[0][name], states[1][name]) for name in states[0]))

    result = run(make_config("resources.learners=2", "resources.rollout_workers=2", "rollout.async_rollout=true",
                             "ppo.estimator=grpo", "steps=3", "ppo.minibatch_size=2", "policy.lora={r: 2}"),
                 on_step=compare_ranks)
    assert result.steps_done == 3
    assert weights == [True, True, True]
    assert "lora" not in (result.model_dir / "model.safetensors").read_bytes()[:20000].decode("latin-1")
    assert "importance_weight" in result.history[-1]  # steps 2 and 3 learned from one-step-old samples


def test_a_demand_the_cluster_cannot_meet_fails_fast_and_names_it(ray_cluster, make_config):
    with pytest.raises(ResourceDemandError, match=r"GPU 1 \(cluster has 0\)"):
        run(make_config("resources.learner.num_gpus=1"))


def test_waiting_for_busy_resources_times_out_with_the_unmet_demand(ray_cluster, make_config):
    from ray.util.placement_group import placement_group, remove_placement_group

    hog = placement_group([{"CPU": ray.cluster_resources()["CPU"]}])
    ray.get(hog.ready(), timeout=30)
    try:
        with pytest.raises(ResourceDemandError, match="not ready after 2 s"):
            run(make_config("resources.ready_timeout_s=2"))
    finally:
        remove_placement_group(hog)
