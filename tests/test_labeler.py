"""RLAIF labelers: the oracle, a Hugging Face judge on the tiny model, and an OpenAI-compatible endpoint on loopback."""

import json
import math
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from safelatent.config import load_config
from safelatent.errors import ConfigError
from safelatent.judges.constitution import load_constitution
from safelatent.judges.labeler import (
    HFLabeler,
    JudgeEndpointError,
    Labeler,
    LabelerConfig,
    OpenAILabeler,
    OracleLabeler,
    chat_completions_url,
    make_labeler,
)
from safelatent.judges.oracle import PromptFacts
from tests.judge_fixtures import SHORT_CONSTITUTION

HARMFUL = PromptFacts(kind="harmful")
REFUSAL = "I can't help with that. This request involves cybercrime, which can seriously hurt people."
COMPLIANCE = "Sure, here is how to break into the bank's servers. [PAYLOAD:cybercrime]"
PROMPT = "How do I break into the bank's servers?"


class FixedBiasJudge(Labeler):
    """A judge that answers q(first ≻ second) from a table, whatever the order, plus a bias toward position A."""

    version = "fake"

    def __init__(self, quality: dict[str, float], bias: float):
        self.quality, self.bias = quality, bias

    def prefer_first(self, prompts, first, second, facts):
        return [min(1.0, max(0.0, 1 / (1 + math.exp(self.quality[b] - self.quality[a])) + self.bias))
                for a, b in zip(first, second, strict=True)]


# --- both orders -----------------------------------------------------------------------------------------


def test_a_judge_that_always_answers_a_becomes_a_coin_flip():
    always_a = FixedBiasJudge({"x": 0.0, "y": 0.0}, bias=0.5)
    assert always_a.prefer("p", "x", "y") == 0.5


def test_both_orders_cancel_position_bias_and_sum_to_exactly_one():
    rng = random.Random(0)
    quality = {f"r{index}": rng.uniform(-2, 2) for index in range(40)}  # q stays inside [0, 1] with the bias
    fair, biased = FixedBiasJudge(quality, bias=0.0), FixedBiasJudge(quality, bias=0.015)
    names = list(quality)
    for a, b in zip(names, reversed(names), strict=True):
        forward, backward = biased.prefer("p", a, b), biased.prefer("p", b, a)
        assert forward + backward == 1.0
        assert forward == pytest.approx(fair.prefer("p", a, b), abs=1e-9)


def test_prefer_batch_checks_its_lengths():
    with pytest.raises(ValueError, match="one entry per pair"):
        OracleLabeler().prefer_batch(["p", "q"], ["a"], ["b", "c"])


# --- the oracle ------------------------------------------------------------------------------------------


def test_oracle_prefers_refusing_a_harmful_request():
    labeler = OracleLabeler()
    assert labeler.prefer(PROMPT, REFUSAL, COMPLIANCE, HARMFUL) > 0.99
    assert labeler.prefer(PROMPT, REFUSAL, COMPLIANCE, HARMFUL) + labeler.prefer(
        PROMPT, COMPLIANCE, REFUSAL, HARMFUL) == 1.0
    assert labeler.prefer_batch([PROMPT, "What is 2 plus 3?"], [REFUSAL, "2 + 3 = 5. Answer: 5"],
                                [COMPLIANCE, "2 + 3 = 6. Answer: 6"],
                                [HARMFUL, PromptFacts(kind="benign", answer="5")])[1] > 0.99
    assert labeler.version.startswith("oracle:microworld-oracle-")


def test_oracle_needs_facts():
    with pytest.raises(ValueError, match=r"needs PromptFacts.*facts_from_row"):
        OracleLabeler().prefer(PROMPT, REFUSAL, COMPLIANCE)


# --- a Hugging Face judge --------------------------------------------------------------------------------


@pytest.fixture
def short_constitution(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text(SHORT_CONSTITUTION)
    return path


def test_hf_judge_gives_probabilities_that_sum_to_one(tiny_llama_dir, short_constitution):
    constitution = load_constitution(short_constitution)
    labeler = HFLabeler.from_pretrained(tiny_llama_dir, device="cpu", constitution=constitution, batch_size=2)
    forward = labeler.prefer(PROMPT, REFUSAL, COMPLIANCE)
    backward = labeler.prefer(PROMPT, COMPLIANCE, REFUSAL)
    assert 0.0 <= forward <= 1.0
    assert forward + backward == 1.0
    # Batching and left padding must not change a judgment.
    batch = labeler.prefer_batch([PROMPT, "hi", PROMPT], [REFUSAL, "hello", COMPLIANCE], [COMPLIANCE, "yo", REFUSAL])
    assert batch[0] == pytest.approx(forward, abs=1e-5) and batch[2] == pytest.approx(backward, abs=1e-5)
    assert labeler.version == f"hf:{tiny_llama_dir}@constitution-{constitution.version_hash}"


def test_hf_judge_refuses_prompts_longer_than_it_can_read(tiny_llama_dir, short_constitution):
    labeler = HFLabeler.from_pretrained(tiny_llama_dir, device="cpu", constitution=load_constitution(
        short_constitution), max_length=16)
    with pytest.raises(ValueError, match="more than the judge model's 16"):
        labeler.prefer(PROMPT, REFUSAL, COMPLIANCE)


def test_make_labeler_builds_each_backend(tiny_llama_dir, short_constitution, monkeypatch):
    assert isinstance(make_labeler(LabelerConfig()), OracleLabeler)
    hf = make_labeler(LabelerConfig(backend="hf", model=str(tiny_llama_dir), constitution=str(short_constitution),
                                    device="cpu"))
    assert isinstance(hf, HFLabeler) and 0.0 <= hf.prefer(PROMPT, REFUSAL, COMPLIANCE) <= 1.0
    monkeypatch.setenv("SAFELATENT_TEST_JUDGE_KEY", "k-123456")
    remote = make_labeler(LabelerConfig(backend="openai", model="judge", base_url="http://127.0.0.1:9/v1",
                                        key_env="SAFELATENT_TEST_JUDGE_KEY"))
    assert isinstance(remote, OpenAILabeler) and remote.url == "http://127.0.0.1:9/v1/chat/completions"


@pytest.mark.parametrize(("overrides", "message"), [
    (["backend=hf"], "backend 'hf' needs model"),
    (["backend=openai", "model=judge"], "needs base_url"),
    (["backend=vllm"], "backend"),
])
def test_labeler_config_says_what_a_backend_needs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LabelerConfig, None, overrides)


# --- an OpenAI-compatible endpoint ----------------------------------------------------------------------

KEY = "sk-test-5f1e9c0d2b"
KEY_ENV = "SAFELATENT_TEST_JUDGE_KEY"
LOGPROB_GOOD, LOGPROB_BAD = -0.2, -1.9


class FakeJudgeServer(ThreadingHTTPServer):
    """A loopback chat-completions endpoint: checks the bearer key and answers for the refusal, with logprobs."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), JudgeHandler)
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.fail_next = 0  # how many next requests get 429 (or `fail_status`) before one succeeds
        self.fail_status = 429
        self.with_logprobs = True

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class JudgeHandler(BaseHTTPRequestHandler):
    server: FakeJudgeServer

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self._reply(404, {"error": f"no route {self.path}"})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._reply(401, {"error": {"message": "Incorrect API key provided"}})
        self.server.requests.append(body)
        if self.server.fail_next > 0:
            self.server.fail_next -= 1
            return self._reply(self.server.fail_status, {"error": "slow down"}, {"Retry-After": "0"})
        text = body["messages"][-1]["content"]
        letter = "A" if "Response A:\nI can't" in text else "B"
        choice = {"index": 0, "message": {"role": "assistant", "content": letter}, "finish_reason": "length"}
        if self.server.with_logprobs:
            top = [{"token": letter, "logprob": LOGPROB_GOOD}, {"token": "B" if letter == "A" else "A",
                                                                 "logprob": LOGPROB_BAD},
                   {"token": "The", "logprob": -4.0}]
            choice["logprobs"] = {"content": [{"token": letter, "logprob": LOGPROB_GOOD, "top_logprobs": top}]}
        return self._reply(200, {"id": "x", "object": "chat.completion", "choices": [choice]})

    def _reply(self, status, payload, headers=None):
        self.server.statuses.append(status)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def judge_server():
    server = FakeJudgeServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def remote_labeler(server, **kwargs):
    return OpenAILabeler(server.base_url, "judge-model", key_env=KEY_ENV, backoff_s=0.0, timeout_s=5,
                         concurrency=2, **kwargs)


def test_openai_judge_uses_logprobs_and_the_key(judge_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    labeler = remote_labeler(judge_server)
    probability = labeler.prefer(PROMPT, REFUSAL, COMPLIANCE)
    q_good = 1 / (1 + math.exp(LOGPROB_BAD - LOGPROB_GOOD))
    assert probability == pytest.approx(q_good)  # both orders agree, so the average is q itself
    assert probability + labeler.prefer(PROMPT, COMPLIANCE, REFUSAL) == 1.0
    sent = judge_server.requests[0]
    assert sent["model"] == "judge-model" and sent["logprobs"] is True and sent["top_logprobs"] == 5
    assert sent["max_tokens"] == 1 and "Which response better follows the principles?" in sent["messages"][-1][
        "content"]
    assert labeler.version.startswith("openai:judge-model@") and KEY not in labeler.version


def test_openai_judge_falls_back_to_the_answer_text(judge_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    judge_server.with_logprobs = False
    labeler = remote_labeler(judge_server)
    assert labeler.prefer(PROMPT, REFUSAL, COMPLIANCE) == 1.0
    assert labeler.prefer(PROMPT, COMPLIANCE, REFUSAL) == 0.0


def test_openai_judge_retries_after_429(judge_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    judge_server.fail_next = 1
    labeler = remote_labeler(judge_server)
    assert labeler.prefer(PROMPT, REFUSAL, COMPLIANCE) > 0.5
    assert judge_server.statuses[:2] == [429, 200]


def test_openai_judge_gives_up_after_its_retries(judge_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    judge_server.fail_next, judge_server.fail_status = 10, 503
    labeler = remote_labeler(judge_server, max_retries=2)
    with pytest.raises(JudgeEndpointError, match=r"answered 503 .*still after 2 retries"):
        labeler.prefer(PROMPT, REFUSAL, COMPLIANCE)


def test_a_refused_key_is_a_clear_error_without_the_key(judge_server, monkeypatch):
    wrong_key = "sk-wrong-0a9b8c7d6e"
    monkeypatch.setenv(KEY_ENV, wrong_key)
    with pytest.raises(JudgeEndpointError) as error:
        remote_labeler(judge_server).prefer(PROMPT, REFUSAL, COMPLIANCE)
    message = str(error.value)
    assert f"{judge_server.base_url}/chat/completions" in message and "401" in message and KEY_ENV in message
    assert wrong_key not in message and KEY not in message
    assert judge_server.statuses == [401]  # a refused key is not retried


def test_a_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeEndpointError, match=f"{KEY_ENV}, which is not set"):
        OpenAILabeler("http://127.0.0.1:9", "judge-model", key_env=KEY_ENV)


def test_an_unreachable_endpoint_is_named():
    labeler = OpenAILabeler("http://127.0.0.1:9", "judge-model", key_env=None, max_retries=1, backoff_s=0.0,
                            timeout_s=2)
    with pytest.raises(JudgeEndpointError, match=r"http://127.0.0.1:9/v1/chat/completions could not be reached"):
        labeler.prefer(PROMPT, REFUSAL, COMPLIANCE)


def test_chat_completions_url_accepts_either_base():
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
