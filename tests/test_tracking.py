import pytest
from mlflow.tracking import MlflowClient

from safelatent.tracking import Tracker, TrackingSettings, flatten


def test_a_run_records_params_metrics_tags_and_artifacts_and_can_be_reopened(tmp_path):
    settings = TrackingSettings(uri=f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", experiment="unit")
    tracker = Tracker.start(settings, "first", tags={"pipeline": "unit"})
    tracker.log_params({"ppo": {"clip_eps": 0.2, "kl": {"beta": 0.05}}, "name": "x"})
    tracker.log_metrics({"reward": 1.5, "nan_is_skipped": float("nan")}, step=1)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    tracker.log_artifacts(tmp_path / "model", "model")
    tracker.finish("KILLED")

    reopened = Tracker.start(settings, "ignored", run_id=tracker.run_id)
    reopened.log_metrics({"reward": 2.0}, step=2)
    reopened.finish()
    client = MlflowClient(tracking_uri=settings.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline"] == "unit"
    assert run.data.params["ppo.kl.beta"] == "0.05"
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "reward")] == [(1, 1.5), (2, 2.0)]
    assert "nan_is_skipped" not in run.data.metrics
    assert [item.path for item in client.list_artifacts(tracker.run_id)] == ["model"]
    assert (tmp_path / "db" / "mlartifacts").is_dir()  # artifacts beside the database, never ./mlruns


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns"])
def test_a_file_store_is_refused(uri):
    with pytest.raises(ValueError, match="file store"):
        TrackingSettings(uri=uri)


def test_flatten_joins_nested_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}
