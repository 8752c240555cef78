"""The model server replica, in-process: its model sources (directory, MLflow registry alias, S3) and the safe
projection head running inside it."""

import pytest
import torch

from actors.serving import ModelServer
from safelatent.errors import SafelatentError
from safelatent.methods.safe_projection import SafeProjection
from safelatent.models.loading import load, save
from safelatent.models.safe_head import attach, detach
from safelatent.serving.decoding import Decoder, SamplingParams
from safelatent.serving.model_source import resolve_source
from safelatent.storage import upload
from safelatent.tracking import Tracker, TrackingSettings
from tests.tiny_models import save_tiny_chat_model

PROMPT = "What is 12 plus 7?"
GREEDY = {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "stop": (), "seed": None}


@pytest.fixture(scope="module")
def sls_model_dir(tmp_path_factory):
    """A tiny random model with a head at layer 1 whose one facet lies far from the states, so it moves them all."""
    directory = save_tiny_chat_model(tmp_path_factory.mktemp("plain") / "model", "llama")
    loaded = load(directory, device="cpu")
    head = SafeProjection(loaded.model.config.hidden_size, facets=1)
    weight = torch.randn(1, loaded.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    attach(loaded.model, 1, head.set_facets(weight, torch.tensor([-50.0])))
    return save(loaded, tmp_path_factory.mktemp("sls") / "model")


def replica(model: str, **settings) -> ModelServer:
    """The deployment's class, constructed as a replica would be (no Ray needed)."""
    return ModelServer.func_or_class({"model": model, "device": "cpu", **settings})


def test_the_safe_head_runs_inside_the_model_server(sls_model_dir):
    server = replica(str(sls_model_dir))
    assert server.info()["safe_head_layer"] == 1
    prompt_ids = server.prepare([{"role": "user", "content": PROMPT}], None, 16)["prompt_ids"]
    served = server.decoder.complete([prompt_ids], [SamplingParams(**GREEDY)])[0][0]  # what _decode batches over
    with_head = load(sls_model_dir, device="cpu")
    expected = Decoder(with_head.model, with_head.tokenizer).complete([prompt_ids], [SamplingParams(**GREEDY)])
    assert served == expected[0][0]
    without_head = load(sls_model_dir, device="cpu")
    detach(without_head.model)
    plain = Decoder(without_head.model, without_head.tokenizer).complete([prompt_ids], [SamplingParams(**GREEDY)])
    assert served != plain[0][0]  # the head changed the reply: it is the head that ran


def test_prepare_refuses_a_prompt_that_leaves_no_room(sls_model_dir):
    server = replica(str(sls_model_dir))
    assert "error" not in server.prepare(None, "hello", 16)
    problem = server.prepare(None, "x " * 200, 100)["error"]
    assert "context of 256 tokens" in problem and "ask for at most" in problem


def test_a_registry_alias_resolves_to_the_registered_files(sls_model_dir, tmp_path):
    settings = TrackingSettings(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="serving-test")
    tracker = Tracker.start(settings, "registered")
    tracker.log_artifacts(sls_model_dir, "model")
    version = tracker.register_model("sls-test", "model")
    tracker.client.set_registered_model_alias("sls-test", "champion", str(version))
    tracker.finish()
    for uri in ("models:/sls-test@champion", f"models:/sls-test/{version}"):
        local = resolve_source(uri, tracking_uri=settings.uri, cache_dir=tmp_path / "cache" / uri[-8:])
        assert load(local, device="cpu") is not None
    server = replica("models:/sls-test@champion", tracking_uri=settings.uri)
    assert server.info()["safe_head_layer"] == 1
    with pytest.raises(SafelatentError, match="no alias 'missing'"):
        resolve_source("models:/sls-test@missing", tracking_uri=settings.uri)
    assert resolve_source("runs/some/model", tracking_uri=settings.uri) == "runs/some/model"


def test_an_s3_model_is_downloaded_and_served(sls_model_dir, s3_endpoint, aws_test_credentials):
    from safelatent.storage import s3_client

    s3_client(s3_endpoint).create_bucket(Bucket="served-models")
    upload(sls_model_dir, "s3://served-models/sls/model/", endpoint_url=s3_endpoint)
    server = replica("s3://served-models/sls/model/", s3_endpoint_url=s3_endpoint)
    assert server.info()["safe_head_layer"] == 1
