"""The Ray Train (V2) runner: checkpoints on S3, restarts after a failure, the failure message, resource checks.

Two DDP workers, resuming a finished run by name and refusing a fresh start under that name are exercised by
the ES2 pipeline test (tests/test_representation_pipelines.py), which runs on this runner."""

import time
from pathlib import Path

import pyarrow.fs
import pytest
import ray.train.torch
import torch

from cluster import train
from cluster.placement import ResourceDemandError
from safelatent.config import validate_config
from safelatent.errors import ConfigError, SafelatentError

STATE_FILE = "state.pt"


def fit_line(config: dict) -> dict:
    """Fit y = 3x with one weight by SGD, each rank on its own slice of x; checkpoint every step.

    `fail_after` makes rank 0 raise once, right after reporting that step, unless `marker` exists (it creates
    it first), so the restarted worker group gets through. The metrics say where the loop started from.
    """
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(torch.nn.Linear(1, 1, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    state = train.restore(lambda directory: torch.load(directory / STATE_FILE))
    if state is not None:
        _plain_module(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    start = state["step"] + 1 if state is not None else 0
    x = torch.linspace(-1, 1, 32)[train.worker_rank()::train.world_size()].unsqueeze(1).to(train.device())
    first_loss = None
    for step in range(start, config["steps"]):
        loss = torch.nn.functional.mse_loss(model(x), 3 * x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first_loss = loss.item() if first_loss is None else first_loss

        def save(directory: Path, step: int = step) -> None:
            torch.save({"model": _plain_module(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "step": step}, directory / STATE_FILE)

        train.report({"step": step, "loss": loss, "first_loss": first_loss, "world_size": train.world_size(),
                      "resumed_from": state["step"] if state is not None else -1}, save_fn=save)
        marker = Path(config.get("marker", "/nonexistent"))
        if step == config.get("fail_after") and train.worker_rank() == 0 and not marker.exists():
            marker.touch()
            raise RuntimeError(f"deliberate failure after step {step}")
    return {"start": start}


def _plain_module(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _weight(checkpoint: Path) -> float:
    return torch.load(checkpoint / STATE_FILE)["model"]["weight"].item()


@pytest.fixture(scope="module", autouse=True)
def quick_polling():
    """The Train controller polls its workers every 2 s by default; a finished tiny run should not wait for it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        yield


def _run(config: dict, storage, name: str, resume: bool = False, **settings):
    settings.setdefault("use_gpu", False)
    return train.run_training(fit_line, {"lr": 1.0, **config}, name=name, settings=train.TrainSettings(**settings),
                              storage=str(storage), resume=resume)


@pytest.mark.slow
def test_a_failure_beyond_max_failures_raises_the_workers_message(ray_cluster, tmp_path):
    marker = tmp_path / "failed-once"
    with pytest.raises(SafelatentError, match="rank 0: RuntimeError: deliberate failure after step 1") as caught:
        _run({"steps": 4, "fail_after": 1, "marker": str(marker)}, tmp_path / "ray_train", "fragile",
             max_failures=0)
    assert "'fragile'" in str(caught.value) and "Traceback" not in str(caught.value)


@pytest.mark.slow
def test_a_failed_worker_group_restarts_from_its_latest_checkpoint_on_s3(ray_cluster, tmp_path, s3_endpoint,
                                                                          aws_test_credentials):
    """Checkpoints go to S3; a worker that fails after step 1 is restarted from there and the run completes; the
    final checkpoint comes back as a local directory."""
    from safelatent import storage

    storage.s3_client(s3_endpoint).create_bucket(Bucket="train-runs")
    marker = tmp_path / "failed-once"
    outcome = train.run_training(fit_line, {"lr": 1.0, "steps": 4, "fail_after": 1, "marker": str(marker)},
                                 name="line-s3", storage="s3://train-runs/ray",
                                 settings=train.TrainSettings(use_gpu=False, s3_endpoint_url=s3_endpoint,
                                                              max_failures=1),
                                 resume=False, local_dir=tmp_path / "downloaded")

    assert marker.exists()
    assert outcome.metrics["resumed_from"] == 1 and outcome.metrics["step"] == 3
    assert outcome.return_value == {"start": 2}

    keys = storage.list_keys("s3://train-runs/ray/line-s3", endpoint_url=s3_endpoint)
    assert train.SNAPSHOT_FILE in keys
    assert any(key.startswith("checkpoint_") and key.endswith("/" + STATE_FILE) for key in keys)
    assert outcome.run_path == "s3://train-runs/ray/line-s3"
    assert outcome.checkpoint.is_relative_to(tmp_path / "downloaded")
    assert torch.load(outcome.checkpoint / STATE_FILE)["step"] == 3
    assert _weight(outcome.checkpoint) == pytest.approx(3.0, abs=0.1), "training went on from the restored weight"
    with pytest.raises(ConfigError, match="s3://train-runs/ray/line-s3"):
        train.run_training(fit_line, {}, name="line-s3", storage="s3://train-runs/ray", resume=False,
                           settings=train.TrainSettings(use_gpu=False, s3_endpoint_url=s3_endpoint))


@pytest.mark.parametrize(("settings", "demand"), [
    ({"workers": 2, "cpus_per_worker": 64}, r"CPU 128 \(cluster has 4\), for 2 worker\(s\) x \{CPU 64\}"),
    ({"workers": 64, "cpus_per_worker": 0.05, "use_gpu": True}, r"GPU 64 \(cluster has \d+\)"),
])
def test_a_demand_the_cluster_cannot_meet_fails_at_once_and_names_it(ray_cluster, tmp_path, settings, demand):
    started = time.monotonic()
    with pytest.raises(ResourceDemandError, match=demand):
        _run({"steps": 1}, tmp_path / "ray_train", "too-big", **settings)
    assert time.monotonic() - started < 5
    assert not (tmp_path / "ray_train").exists()


def test_a_worker_larger_than_every_node_is_refused_even_when_the_total_would_do():
    with pytest.raises(ResourceDemandError, match=r"no node can hold one worker of \{CPU 3\}"):
        train.check_workers_fit(1, {"CPU": 3}, nodes=[{"CPU": 2}, {"CPU": 2}])
    train.check_workers_fit(2, {"CPU": 2}, nodes=[{"CPU": 2}, {"CPU": 2}])


def test_storage_paths_and_filesystems(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert train.storage_filesystem("runs/x") == (str(tmp_path.resolve() / "runs" / "x"), None)

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("SAFELATENT_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    path, filesystem = train.storage_filesystem("s3://bucket/some/prefix/")
    assert path == "bucket/some/prefix"
    assert isinstance(filesystem, pyarrow.fs.S3FileSystem)
    assert filesystem.region == "eu-west-1"
    assert train.storage_filesystem("s3://bucket", "https://minio.example:9000")[0] == "bucket"


@pytest.mark.parametrize(("raw", "problem"), [
    ({"storage": "gs://bucket/x"}, "unsupported scheme"),
    ({"storage": "s3://"}, "no bucket"),
    ({"s3_endpoint_url": "minio:9000"}, "http:// or https://"),
    ({"workers": 0}, "workers"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
])
def test_settings_refuse_bad_values_with_a_reason(raw, problem):
    with pytest.raises(ConfigError, match=problem):
        validate_config(train.TrainSettings, raw)


def test_the_trainer_leaves_out_only_the_placement_group_cleaner(ray_cluster):
    trainer = train._Trainer(fit_line, scaling_config=ray.train.ScalingConfig(num_workers=1))
    defaults = ray.train.torch.TorchTrainer._create_default_callbacks(trainer)
    ray_default = [type(callback).__name__ for callback in defaults]
    ours = [type(callback).__name__ for callback in trainer._create_default_callbacks()]
    assert "PlacementGroupCleanerCallback" in ray_default  # the name the filter looks for is still Ray's
    assert ours == [name for name in ray_default if name != "PlacementGroupCleanerCallback"]
