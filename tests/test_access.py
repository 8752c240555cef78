"""API keys and rate limits, and the OpenAI request schema the server validates against."""

import pytest
from pydantic import ValidationError

from safelatent.errors import ConfigError
from safelatent.serving.access import (
    APIKeySettings,
    KeyChecker,
    RateLimiter,
    RateLimitSettings,
    digest,
    key_digests,
    presented_key,
    read_keys,
)
from safelatent.serving.openai_schema import ChatCompletionRequest, CompletionRequest


def test_keys_come_from_the_environment_and_a_file(tmp_path):
    secret = tmp_path / "keys"
    secret.write_text("file-key-1\n\nfile-key-2\n")
    settings = APIKeySettings(env="MY_KEYS", file=str(secret))
    assert read_keys(settings, {"MY_KEYS": "env-a, env-b"}) == ["env-a", "env-b", "file-key-1", "file-key-2"]
    assert key_digests(settings, {}) == [digest("file-key-1"), digest("file-key-2")]
    with pytest.raises(ConfigError, match=r"\$MY_KEYS"):
        key_digests(APIKeySettings(env="MY_KEYS"), {})
    assert key_digests(APIKeySettings(env="MY_KEYS", required=False), {}) == []
    with pytest.raises(ConfigError, match="does not exist"):
        read_keys(APIKeySettings(file=str(tmp_path / "missing")), {})


def test_key_checker_tells_missing_from_wrong():
    checker = KeyChecker([digest("good")])
    assert checker.identify("good") == digest("good")
    with pytest.raises(PermissionError, match="missing"):
        checker.identify(None)
    with pytest.raises(PermissionError, match="invalid"):
        checker.identify("bad")
    open_server = KeyChecker([], required=False)
    assert open_server.identify(None) is None and open_server.identify("anything") is None


def test_presented_key_reads_bearer_and_api_key_headers():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer  abc "}) == "abc"
    assert presented_key({"api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({}) is None


def test_rate_limiter_allows_a_burst_then_refills_per_caller():
    now = [0.0]
    limiter = RateLimiter(RateLimitSettings(requests_per_minute=60, burst=3), clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(1.0)
    assert limiter.acquire("b") == 0.0  # buckets are per caller
    now[0] += 1.0
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_chat_request_schema():
    request = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "developer", "content": "be brief"},
                                   {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                                {"type": "text", "text": "there"}]}],
        "stop": "END", "max_completion_tokens": 5, "frequency_penalty": 0.0})
    assert request.template_messages() == [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "hi there"}]
    sampling = request.sampling(default_max_tokens=64)
    assert (sampling.max_tokens, sampling.stop, sampling.temperature) == (5, ("END",), 1.0)
    assert ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}]}
                                                ).sampling(64).max_tokens == 64


@pytest.mark.parametrize(("change", "problem"), [
    ({"n": 2}, "only n=1"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"temperature": 3}, "less than or equal to 2"),
    ({"top_p": 0}, "greater than 0"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"messages": []}, "at least 1"),
    ({"messages": [{"role": "system", "content": "x"}]}, "at least one user message"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "only text"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"max_tokens": 0}, "greater than or equal to 1"),
])
def test_chat_request_schema_refuses_with_a_reason(change, problem):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **change}
    with pytest.raises(ValidationError, match=problem):
        ChatCompletionRequest.model_validate(body)


def test_completion_request_schema():
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["one"]}).prompt == "one"
    for body, problem in (({"prompt": ["a", "b"]}, "one prompt"), ({"prompt": ""}, "empty"),
                          ({"prompt": "a", "echo": True}, "echo")):
        with pytest.raises(ValidationError, match=problem):
            CompletionRequest.model_validate({"model": "m", **body})
