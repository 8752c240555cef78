import boto3
import pytest

from safelatent import checkpoint


def write(tmp_path, name, step):
    staging = tmp_path / name
    staging.mkdir()
    (staging / checkpoint.LEARNER_FILE).write_bytes(b"weights")
    (staging / checkpoint.STATE_FILE).write_text(f'{{"step": {step}}}')
    return staging


def test_local_checkpoints_publish_list_and_prune(tmp_path):
    root = str(tmp_path / "ckpt")
    assert checkpoint.latest_checkpoint(root) is None
    for step in (2, 4, 6):
        checkpoint.publish(write(tmp_path, f"s{step}", step), root, step, keep=2)
    assert [step for step, _ in checkpoint.list_checkpoints(root)] == [4, 6]
    step, location = checkpoint.latest_checkpoint(root)
    assert step == 6 and checkpoint.read_state(location) == {"step": 6}
    assert (checkpoint.fetch(location) / checkpoint.LEARNER_FILE).read_bytes() == b"weights"


def test_a_checkpoint_without_its_marker_is_ignored(tmp_path):
    root = tmp_path / "ckpt"
    checkpoint.publish(write(tmp_path, "s2", 2), str(root), 2)
    half_written = root / "step-000004"
    half_written.mkdir()
    (half_written / checkpoint.LEARNER_FILE).write_bytes(b"partial")
    assert [step for step, _ in checkpoint.list_checkpoints(str(root))] == [2]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.fetch(str(half_written))


def test_s3_checkpoints_round_trip(s3_endpoint, aws_test_credentials, monkeypatch, tmp_path):
    monkeypatch.setenv("SAFELATENT_S3_ENDPOINT_URL", s3_endpoint)
    assert checkpoint.list_checkpoints("s3://no-such-bucket/run") == []
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="ckpt-unit")
    root = "s3://ckpt-unit/run"
    for step in (1, 2, 3):
        checkpoint.publish(write(tmp_path, f"s{step}", step), root, step, keep=2)
    assert checkpoint.list_checkpoints(root) == [(2, f"{root}/step-000002"), (3, f"{root}/step-000003")]
    assert checkpoint.read_state(f"{root}/step-000003") == {"step": 3}
    local = checkpoint.fetch(f"{root}/step-000003", tmp_path / "down")
    assert (local / checkpoint.LEARNER_FILE).read_bytes() == b"weights"
