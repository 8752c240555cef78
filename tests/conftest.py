"""Shared fixtures: an S3 stand-in (moto's server mode, loopback only) and credentials that reach nothing real."""

import pytest

from safelatent import storage


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on a free loopback port, shared by the session; other processes can reach it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_test_credentials(monkeypatch, tmp_path):
    """Fake credentials only, so no real account or config file can be touched."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", storage.ENDPOINT_ENV_VAR):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama-architecture chat model saved in Hugging Face format."""
    from tests.tiny_models import save_tiny_chat_model

    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2-architecture chat model saved in Hugging Face format."""
    from tests.tiny_models import save_tiny_chat_model

    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_judges_dir(tmp_path_factory):
    """Judges built from the tiny judges config (a fresh two-layer backbone): real files, meaningless accuracy."""
    from pathlib import Path

    import torch

    from safelatent.config import load_config
    from safelatent.judges.build import JudgesConfig, build_judges

    config_path = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "judges_tiny.yaml"
    config = load_config(JudgesConfig, config_path, [f"out_root={tmp_path_factory.mktemp('judges')}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_judges(config, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every pipeline test (starting one costs seconds, its actors more)."""
    import ray

    if not ray.is_initialized():
        # The actors' S3 credentials come from the cluster's environment, as on a real cluster (instance roles):
        # here the fake ones of the moto server the resume test uses.
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}})
    yield
    ray.shutdown()
