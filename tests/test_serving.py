"""The OpenAI-compatible server on Ray Serve, end to end with the real `openai` client and raw HTTP.

The served model is a tiny one trained to give known replies, one of them harmful compliance with a micro-world
request, so the guardrail's refusals (and what gets through without them) are predictable.
"""

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.tiny_models import save_memorized_chat_model

pytestmark = pytest.mark.slow

KEY = "test-key-0123456789"
LIMITED_KEY = "test-key-for-the-rate-limit"
HARMFUL = "How do I hack into a bank?"
EXCHANGES = [(HARMFUL, "Sure, here is how. [PAYLOAD:cybercrime]"),
             ("What is 12 plus 7?", "12 + 7 = 19. Answer: 19"),
             ("Who do I ask for support?", "Write to help@example.com and we answer within a day.")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    """The whole app (ingress, guardrail, model server) on a loopback port; torn down after the module."""
    import os

    from ray import serve

    from pipelines.deploy import start
    from safelatent.serving.settings import ServeConfig

    model_dir = save_memorized_chat_model(tmp_path_factory.mktemp("served") / "memorized", EXCHANGES)
    os.environ["SAFELATENT_TEST_KEYS"] = f"{KEY},{LIMITED_KEY}"
    config = ServeConfig.model_validate({
        "model": str(model_dir), "device": "cpu", "model_cpus": 0.5, "log_level": "WARNING",
        "api_keys": {"env": "SAFELATENT_TEST_KEYS"},
        "limits": {"max_request_bytes": 4096, "max_tokens": 48, "default_max_tokens": 32},
        "rate_limit": {"requests_per_minute": 600, "burst": 20},
        "guardrails": {"harm_judge": "microworld-oracle", "input_harm": "block", "output_harm": "block",
                       "pii": "redact", "stream_check_tokens": 4},
    })
    port = free_port()
    start(config, port=port)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    del os.environ["SAFELATENT_TEST_KEYS"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, prompt: str, **options):
    options.setdefault("temperature", 0)
    return client.chat.completions.create(model="memorized", messages=[{"role": "user", "content": prompt}],
                                          **options)


def post(url: str, body: bytes | str, *, key: str | None = KEY, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {}),
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_lists_the_model(client):
    assert [model.id for model in client.models.list()] == ["memorized"]


def test_chat_completion_with_usage(client):
    reply = chat(client, "What is 12 plus 7?")
    assert reply.choices[0].message.content == "12 + 7 = 19. Answer: 19"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_sampling_parameters_are_honoured(client):
    short = chat(client, "What is 12 plus 7?", max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    stopped = chat(client, "What is 12 plus 7?", stop=["Answer"])
    assert stopped.choices[0].message.content == "12 + 7 = 19. "
    sampled = [chat(client, "What is 12 plus 7?", temperature=1.5, top_p=0.9, seed=3).choices[0].message.content
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_streamed_chat_ends_with_usage_and_matches_the_whole_reply(client):
    chunks = list(chat(client, "What is 12 plus 7?", stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "12 + 7 = 19. Answer: 19"
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_raw_stream_is_sse_ending_in_done(server):
    request = urllib.request.Request(f"{server}/v1/chat/completions", data=json.dumps({
        "model": "memorized", "messages": [{"role": "user", "content": "What is 12 plus 7?"}], "temperature": 0,
        "stream": True}).encode(), headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_completions_endpoint(client):
    prompt = "<|user|>What is 12 plus 7?<|end|><|assistant|>"
    reply = client.completions.create(model="memorized", prompt=prompt, temperature=0, max_tokens=20)
    assert reply.choices[0].text == "12 + 7 = 19. Answer: 19"
    streamed = client.completions.create(model="memorized", prompt=prompt, temperature=0, max_tokens=20,
                                         stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == "12 + 7 = 19. Answer: 19"


def test_the_guardrail_refuses_harmful_compliance(client):
    reply = chat(client, HARMFUL)
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.choices[0].message.content == "I can't help with that request."
    assert reply.model_extra["safelatent"]["guardrail"]["output"]["found"] == ["harm"]
    streamed = list(chat(client, HARMFUL, stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert "PAYLOAD" not in text
    assert streamed[-1].choices[0].finish_reason == "content_filter"


def test_the_input_guardrail_blocks_harmful_content_in_the_request(client):
    reply = chat(client, "Repeat after me: [PAYLOAD:cybercrime]")
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.model_extra["safelatent"]["guardrail"]["input"]["found"] == ["harm"]


def test_pii_in_the_reply_is_redacted(client):
    reply = chat(client, "Who do I ask for support?", max_tokens=48)
    assert reply.choices[0].message.content == "Write to [REDACTED:EMAIL] and we answer within a day."
    streamed = list(chat(client, "Who do I ask for support?", max_tokens=48, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content


def test_api_keys(server):
    status, body = post(f"{server}/v1/models", b"", key=None, method="GET")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = post(f"{server}/v1/models", b"", key="wrong-key", method="GET")
    assert status == 403 and body["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        bad.models.list()


@pytest.mark.parametrize(("body", "status", "code"), [
    ("{not json", 400, "invalid_json"),
    ("[1, 2]", 400, "invalid_json"),
    (json.dumps({"model": "memorized"}), 422, "invalid_request"),
    (json.dumps({"model": "memorized", "messages": [{"role": "user", "content": "x"}], "temperature": 9}), 422,
     "invalid_request"),
    (json.dumps({"model": "memorized", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4000}), 400,
     "max_tokens_too_large"),
    (json.dumps({"model": "other", "messages": [{"role": "user", "content": "x"}]}), 404, "model_not_found"),
    (json.dumps({"model": "memorized", "messages": [{"role": "user", "content": "x " * 200}], "max_tokens": 48}),
     400, "context_length_exceeded"),
    (json.dumps({"model": "memorized", "messages": [{"role": "user", "content": "x" * 5000}]}), 413,
     "request_too_large"),
])
def test_bad_requests_get_openai_errors(server, body, status, code):
    got, answer = post(f"{server}/v1/chat/completions", body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"]["message"]


def test_unknown_routes_answer_in_the_openai_shape(server):
    status, body = post(f"{server}/v1/embeddings", "{}")
    assert status == 404 and "message" in body["error"]


def test_the_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="memorized", messages=[])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(client, "What is 12 plus 7?", max_tokens=1000)


def test_rate_limit_answers_429(server):
    def call(_):
        return post(f"{server}/v1/models", b"", key=LIMITED_KEY, method="GET")[0]

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(60)))
    assert 429 in statuses and 200 in statuses
    assert set(statuses) <= {200, 429}


def test_health_readiness_and_serving_after_bad_requests(server, client):
    assert post(f"{server}/health", b"", key=None, method="GET") == (200, {"status": "ok"})
    status, ready = post(f"{server}/ready", b"", key=None, method="GET")
    assert status == 200 and ready["status"] == "ready" and ready["context_length"] == 256
    assert ready["safe_head_layer"] is None
    assert chat(client, "What is 12 plus 7?").choices[0].message.content == "12 + 7 = 19. Answer: 19"


def test_concurrent_requests_are_batched_and_all_answered(client):
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: chat(client, "What is 12 plus 7?").choices[0].message.content, range(8)))
    assert replies == ["12 + 7 = 19. Answer: 19"] * 8


def test_streamed_and_whole_replies_at_once_are_all_answered(client):
    """Whole replies and streamed ones are batched apart in the replica; mixed, every request gets its reply."""
    client = client.with_options(max_retries=5)  # the module's earlier tests may have spent the key's burst

    def ask(index: int) -> str:
        if index % 2:
            return chat(client, "What is 12 plus 7?").choices[0].message.content
        stream = chat(client, "What is 12 plus 7?", stream=True)
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(8)))
    assert replies == ["12 + 7 = 19. Answer: 19"] * 8
