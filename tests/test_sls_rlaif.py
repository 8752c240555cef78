"""The sls-rlaif pipeline on a local Ray cluster: fit the head, PPO with it, evaluate, track and register."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.sls_rlaif import FIT_RECORD, FIT_REPORT, LATENT_PLOT, SLSRLAIFConfig, run, start_model_dir
from safelatent.config import load_config
from safelatent.models.loading import load
from safelatent.models.safe_head import attached_head, has_head


def test_a_short_sls_rlaif_run_fits_the_head_trains_and_updates_it_and_registers_the_model(
        ray_cluster, tiny_llama_dir, tiny_judges_dir, tmp_path):
    config = load_config(SLSRLAIFConfig, None, [
        f"model={tiny_llama_dir}", "base_model_config=null", f"judges={tiny_judges_dir}", "judges_config=null",
        "steps=2", f"out_root={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
        "ppo.minibatch_size=4", "ppo.epochs=1", "optimizer.learning_rate=1e-3",
        "evaluation.limit=2", "evaluation.max_new_tokens=8",
        "head.facets=2", "head.examples_per_kind=8", "head.adversarial_steps=10",
        "head_updates.every=1", "head_updates.adversarial_steps=20", "head_updates.examples_per_kind=4",
        "microworld.benign_per_family={train: 10, validation: 4, test: 10}",
        "microworld.harmful_per_category={train: 4, validation: 4, test: 4}",
        "microworld.jailbreaks_per_wrapper={train: 2, validation: 2, test: 2}"])
    result = run(config)
    assert result.steps_done == 2

    start = start_model_dir(config, str(tiny_llama_dir))
    record = json.loads((start / FIT_RECORD).read_text())
    assert has_head(start) and 0 <= record["layer"] < 3
    report = json.loads((start / FIT_REPORT).read_text())
    assert set(report["layer_accuracies"]) == {"0", "1", "2"} and report["layer"] == record["layer"]
    assert (start / LATENT_PLOT).stat().st_size > 10_000
    assert not [path for path in start.parent.iterdir() if path.name.startswith(".")], "scratch folder left behind"

    assert has_head(result.model_dir), "the exported model must carry its head"
    trained = load(result.model_dir, device="cpu")
    assert attached_head(trained.model).layer == record["layer"]
    assert set(result.evaluation) >= {"harmlessness", "task_accuracy", "over_refusal"}
    # one head update, after step 1 (none after the last): the exported head is not the fitted one
    fitted, updated = attached_head(load(start, device="cpu").model).head, attached_head(trained.model).head
    assert not torch.equal(fitted.weight, updated.weight)
    updates = [entry for entry in result.history if "head_update/harmful_moved" in entry]
    assert [entry["step"] for entry in updates] == [1]
    assert updates[0]["head_update/states"] > updates[0]["head_update/harmful_states"] > 0

    client = MlflowClient(tracking_uri=config.tracking.uri)
    run_id = result.tracking_run.rsplit(" ", 1)[-1]
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.data.tags["pipeline"] == "sls-rlaif"
    assert {"head/probe_accuracy_after", "head_update/harmful_moved", "eval/harmlessness"} <= set(
        mlflow_run.data.metrics)
    assert {"model", "eval", "head"} <= {item.path for item in client.list_artifacts(run_id)}
    versions = client.search_model_versions("name='sls-rlaif'")
    assert [version.run_id for version in versions] == [run_id] and result.registered == "sls-rlaif version 1"

    # Another run with the same head settings (here: resuming this one) reuses the start model.
    before = (start / FIT_RECORD).stat().st_mtime_ns
    again = run(config.model_copy(update={"steps": 1}), resume=True)
    assert (start / FIT_RECORD).stat().st_mtime_ns == before and again.steps_done == 2
    assert again.registered == "sls-rlaif version 2"


def test_a_head_layer_the_model_lacks_fails_before_any_actor_starts_and_leaves_nothing(
        tiny_llama_dir, tiny_judges_dir, tmp_path):
    from safelatent.errors import ConfigError

    config = load_config(SLSRLAIFConfig, None, [
        f"model={tiny_llama_dir}", "base_model_config=null", f"judges={tiny_judges_dir}", "judges_config=null",
        f"out_root={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "head.layer=7"])
    with pytest.raises(ConfigError, match=r"head\.layer: layer 7 is out of range for a model with 3 layers"):
        run(config)
    assert list((tmp_path / "out" / "start_models").iterdir()) == []
    assert not (tmp_path / "mlflow.db").exists(), "nothing is tracked for a run that never started"


def test_head_updates_that_would_never_happen_are_a_config_error():
    from safelatent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"head_updates.every=15 with steps=15: .* no update would happen"):
        load_config(SLSRLAIFConfig, None, ["steps=15", "head_updates.every=15"])
    assert load_config(SLSRLAIFConfig, None, ["steps=15", "head_updates.every=5"]).head_updates.every == 5
