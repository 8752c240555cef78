"""RLAIF labelers: which of two responses better follows the constitution, as a probability, from any judge.

A judge shown the prompt x and two responses in one order gives q(first ≻ second). Judges favour a position,
so q(a, b) + q(b, a) is rarely 1. Every labeler asks both orders and returns

    P(a ≻ b) = ½ · (q(a, b) + 1 − q(b, a)),

which makes P(a ≻ b) + P(b ≻ a) = 1 and turns a judge that always answers "A" into a coin flip (0.5).
The margin ½·(q(a, b) − q(b, a)) is rounded to a multiple of 2⁻⁵³ so both probabilities are exact floats and
their sum is exactly 1.

Backends give q differently:
- oracle: the micro-world oracle's logistic of score differences (needs each prompt's PromptFacts);
- hf: a causal LM reads the judge prompt through its chat template; q = σ(ℓ_A − ℓ_B), the softmax over the
  next-token logits of "A" and "B" alone;
- openai: an OpenAI-compatible /v1/chat/completions endpoint asked for one token; q from the logprobs of
  "A" and "B" when returned, else 1.0 for a reply "A" and 0.0 for "B".
Each labeler has a `version` naming backend, judge model and constitution hash; every label records it.
"""

import hashlib
import inspect
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import requests
import torch
from pydantic import Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safelatent.config import Config
from safelatent.credentials import env_secret, redact
from safelatent.errors import SafelatentError
from safelatent.judges import oracle
from safelatent.judges.constitution import Aspect, Constitution, judge_messages, load_constitution
from safelatent.judges.oracle import PromptFacts
from safelatent.judges.sequence_classifier import position_limit
from safelatent.models.loading import DeviceName, load

logger = logging.getLogger(__name__)

LETTERS = ("A", "B")
_EXACT_GRID = 2.0**53  # margins on this grid keep 0.5 ± margin exact in binary floating point
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


class JudgeEndpointError(SafelatentError):
    """An HTTP judge failed: the message names the URL and the status, never the API key."""


class Labeler(ABC):
    """Common interface: the probability that response A is better, asked in both orders and averaged."""

    version: str

    def prefer(self, prompt: str, response_a: str, response_b: str, facts: PromptFacts | None = None) -> float:
        """P(response_a ≻ response_b) for one prompt."""
        return self.prefer_batch([prompt], [response_a], [response_b], None if facts is None else [facts])[0]

    def prefer_batch(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
                     facts: Sequence[PromptFacts | None] | None = None) -> list[float]:
        """P(responses_a[i] ≻ responses_b[i]) for each i, both orders averaged."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"prompts, responses_a and responses_b must have one entry per pair; got "
                             f"{len(prompts)}, {len(responses_a)} and {len(responses_b)}")
        all_facts = list(facts) if facts is not None else [None] * len(prompts)
        if len(all_facts) != len(prompts):
            raise ValueError(f"facts must have one entry per pair: got {len(all_facts)} for {len(prompts)} pairs")
        if not prompts:
            return []
        forward = self.prefer_first(prompts, responses_a, responses_b, all_facts)
        backward = self.prefer_first(prompts, responses_b, responses_a, all_facts)
        return [_both_orders(first, second) for first, second in zip(forward, backward, strict=True)]

    @abstractmethod
    def prefer_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                     facts: Sequence[PromptFacts | None]) -> list[float]:
        """q(first ≻ second) with `first` shown as response A: one order only, position bias included."""


def _both_orders(forward: float, backward: float) -> float:
    margin = round((forward - backward) / 2 * _EXACT_GRID) / _EXACT_GRID
    return 0.5 + margin


# --- the micro-world oracle ---------------------------------------------------------------------------


def _oracle_version() -> str:
    # The oracle's rules are its code: hashing the source names exactly which rules produced a label.
    source = inspect.getsource(oracle)
    return f"oracle:microworld-oracle-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


class OracleLabeler(Labeler):
    """The micro-world oracle as a labeler: exact, free, offline; it judges micro-world prompts only."""

    def __init__(self) -> None:
        self.version = _oracle_version()

    def prefer_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                     facts: Sequence[PromptFacts | None]) -> list[float]:
        missing = [index for index, fact in enumerate(facts) if fact is None]
        if missing:
            raise ValueError(f"the oracle labeler needs PromptFacts for every pair (missing for {len(missing)} of "
                             f"{len(facts)}, first at index {missing[0]}); build them with "
                             "safelatent.judges.oracle.facts_from_row(row), or use the hf or openai backend for "
                             "prompts outside the micro-world")
        return [oracle.prefer(fact, a, b) for fact, a, b in zip(facts, first, second, strict=True)]


# --- a Hugging Face causal LM as judge ------------------------------------------------------------------


class HFLabeler(Labeler):
    """Any Hugging Face causal LM as judge: the next-token logits of "A" against "B" after the judge prompt."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 constitution: Constitution | None = None, aspects: Sequence[str] | None = None,
                 batch_size: int = 8, max_length: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.constitution = constitution or load_constitution()
        self.aspects = list(aspects) if aspects is not None else None
        self.batch_size = batch_size
        self.max_length = max_length or position_limit(model)
        self.letter_ids = {letter: _letter_token_ids(tokenizer, letter) for letter in LETTERS}
        if set(self.letter_ids["A"]) & set(self.letter_ids["B"]):
            raise ValueError(f"judge tokenizer of {name} maps 'A' and 'B' to a shared token; it cannot tell the "
                             "answers apart, use another judge model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.version = f"hf:{name}@constitution-{self.constitution.version_hash}"

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: DeviceName = "auto", **kwargs: Any) -> "HFLabeler":
        loaded = load(name_or_path, device=device)
        return cls(loaded.model, loaded.tokenizer, name=str(name_or_path), **kwargs)

    @torch.no_grad()
    def prefer_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                     facts: Sequence[PromptFacts | None]) -> list[float]:
        texts = [self.tokenizer.apply_chat_template(
            judge_messages(self.constitution, prompt, a, b, self.aspects), tokenize=False, add_generation_prompt=True)
            for prompt, a, b in zip(prompts, first, second, strict=True)]
        device = next(self.model.parameters()).device
        padding_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # the next token is then predicted at the last position of every row
        probabilities: list[float] = []
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                       add_special_tokens=False).to(device)
                self._check_length(batch["attention_mask"])
                # Left padding shifts positions; counting them from the first real token keeps each row as if alone.
                positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = self.model(**batch, position_ids=positions).logits[:, -1, :].float()
                log_probs = torch.log_softmax(logits, dim=-1)
                letter_a = torch.logsumexp(log_probs[:, self.letter_ids["A"]], dim=-1)
                letter_b = torch.logsumexp(log_probs[:, self.letter_ids["B"]], dim=-1)
                probabilities.extend(torch.sigmoid(letter_a - letter_b).tolist())
        finally:
            self.tokenizer.padding_side = padding_side
        return probabilities

    def _check_length(self, attention_mask: torch.Tensor) -> None:
        longest = int(attention_mask.sum(-1).max())
        if self.max_length is not None and longest > self.max_length:
            raise ValueError(f"a judge prompt is {longest} tokens, more than the judge model's {self.max_length}; "
                             "shorten the constitution, judge fewer aspects (aspects: [harmlessness]) or use a judge "
                             "with a longer context")


def _letter_token_ids(tokenizer: PreTrainedTokenizerBase, letter: str) -> list[int]:
    # A reply may begin "A" or " A" depending on the tokenizer; both spellings count as that answer.
    ids = sorted({tuple(tokenizer.encode(spelling, add_special_tokens=False)) for spelling in (letter, " " + letter)})
    single = [token_ids[0] for token_ids in ids if len(token_ids) == 1]
    if not single:
        raise ValueError(f"the judge tokenizer has no single token for {letter!r}; an HF judge reads the next-token "
                         "logits of 'A' and 'B', so pick a judge model whose tokenizer has them")
    return single


# --- an OpenAI-compatible endpoint as judge --------------------------------------------------------------


def chat_completions_url(base_url: str) -> str:
    """The chat completions URL under a base URL given with or without its /v1 suffix."""
    base = base_url.rstrip("/")
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


class OpenAILabeler(Labeler):
    """An OpenAI-compatible chat endpoint as judge, asked for a single token "A" or "B" with its logprobs."""

    def __init__(self, base_url: str, model: str, *, constitution: Constitution | None = None,
                 aspects: Sequence[str] | None = None, key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 30.0, max_retries: int = 4, backoff_s: float = 1.0, concurrency: int = 4):
        self.url = chat_completions_url(base_url)
        self.model = model
        self.constitution = constitution or load_constitution()
        self.aspects = list(aspects) if aspects is not None else None
        self.key_env = key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self._api_key = None
        if key_env is not None:
            self._api_key = env_secret(key_env)
            if self._api_key is None:
                raise JudgeEndpointError(f"the judge endpoint {self.url} needs an API key in the environment variable "
                                         f"{key_env}, which is not set; export it, or set key_env: null for an "
                                         "endpoint without authentication")
        self._sessions = threading.local()
        self.version = f"openai:{model}@{self.url}@constitution-{self.constitution.version_hash}"

    def prefer_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                     facts: Sequence[PromptFacts | None]) -> list[float]:
        conversations = [judge_messages(self.constitution, prompt, a, b, self.aspects)
                         for prompt, a, b in zip(prompts, first, second, strict=True)]
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(self._ask, conversations))

    def _ask(self, messages: list[dict[str, str]]) -> float:
        body = {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0.0,
                "logprobs": True, "top_logprobs": 5}
        return _letter_probability(self._post(body), self.url)

    def _session(self) -> requests.Session:
        if not hasattr(self._sessions, "session"):
            session = requests.Session()
            if self._api_key is not None:
                session.headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            self._sessions.session = session
        return self._sessions.session

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        problem = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * 2**attempt
            try:
                response = self._session().post(self.url, json=body, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as error:
                problem = f"could not be reached ({type(error).__name__})"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise JudgeEndpointError(f"judge endpoint {self.url} answered 200 with a body that is not "
                                                 f"JSON: {_excerpt(response.text)}") from None
                problem = f"answered {response.status_code} {response.reason}: {_excerpt(response.text)}"
                if response.status_code not in RETRYABLE_STATUS:
                    raise JudgeEndpointError(f"judge endpoint {self.url} {problem}{self._hint(response.status_code)}")
                wait = _retry_after(response) or wait
            if attempt < self.max_retries:
                logger.warning("judge endpoint %s %s; retrying in %.1f s (%d/%d)", self.url, problem, wait,
                               attempt + 1, self.max_retries)
                time.sleep(wait)
        raise JudgeEndpointError(f"judge endpoint {self.url} {problem}, still after {self.max_retries} retries; "
                                 "check that the server is up and not overloaded, or raise max_retries/backoff_s")

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            where = f"the environment variable {self.key_env}" if self.key_env else "no variable (key_env is null)"
            return f". The API key was refused; check the key read from {where}"
        if status == 404:
            return f". Check base_url (requests go to {self.url}) and that model {self.model!r} is served there"
        return ""


def _excerpt(text: str, limit: int = 200) -> str:
    # Servers sometimes echo request headers back; scrub secrets before the text reaches an error message.
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(response: requests.Response) -> float | None:
    try:
        return min(float(response.headers.get("Retry-After", "")), MAX_RETRY_AFTER_S)
    except ValueError:
        return None


def _letter_probability(reply: dict[str, Any], url: str) -> float:
    """q(A ≻ B) from one completion: from the top logprobs when A or B is among them, else from the text."""
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise JudgeEndpointError(f"judge endpoint {url} answered without choices: {_excerpt(str(reply))}") from None
    top = ((choice.get("logprobs") or {}).get("content") or [{}])[0].get("top_logprobs") or []
    letter_logprobs: dict[str, list[float]] = {letter: [] for letter in LETTERS}
    for entry in top:
        letter = str(entry.get("token", "")).strip().upper()
        if letter in letter_logprobs and entry.get("logprob") is not None:
            letter_logprobs[letter].append(float(entry["logprob"]))
    if any(letter_logprobs.values()):
        # A letter missing from the top-k has at most the smallest listed logprob: using that bound keeps the
        # estimate on the cautious side of the truth instead of claiming certainty.
        floor = min(float(entry["logprob"]) for entry in top if entry.get("logprob") is not None)
        log_a, log_b = (_logsumexp(letter_logprobs[letter] or [floor]) for letter in LETTERS)
        return 1.0 / (1.0 + math.exp(log_b - log_a))
    text = str((choice.get("message") or {}).get("content") or "").strip().upper()
    if text.startswith("A"):
        return 1.0
    if text.startswith("B"):
        return 0.0
    logger.warning("judge endpoint %s answered %r, neither A nor B; counting it as undecided (0.5)", url, text[:40])
    return 0.5


def _logsumexp(values: list[float]) -> float:
    peak = max(values)
    return peak + math.log(sum(math.exp(value - peak) for value in values))


# --- configuration ---------------------------------------------------------------------------------------


class LabelerConfig(Config):
    """Which judge labels preference pairs, and how to reach it."""

    backend: Literal["oracle", "hf", "openai"] = Field(
        "oracle", description="oracle: the micro-world oracle (offline, exact); hf: a causal LM; openai: an endpoint.")
    model: str | None = Field(None, description="hf: a model directory or hub id; openai: the served model name.")
    base_url: str | None = Field(None, description="openai: the endpoint, e.g. http://127.0.0.1:8000/v1.")
    key_env: str | None = Field("OPENAI_API_KEY", description="openai: environment variable holding the API key; "
                                                              "null for an endpoint without authentication.")
    constitution: str | None = Field(None, description="A constitution YAML file; null for the packaged one.")
    aspects: list[Aspect] | None = Field(None, description="Judge only principles for these aspects; null for all.")
    batch_size: int = Field(8, ge=1, description="hf: judge prompts per forward pass.")
    device: DeviceName = Field("auto", description="hf: where the judge model runs.")
    timeout_s: float = Field(30.0, gt=0, description="openai: seconds to wait for one reply.")
    max_retries: int = Field(4, ge=0, description="openai: retries on 429, 5xx, timeouts and refused connections.")
    backoff_s: float = Field(1.0, ge=0, description="openai: first retry delay, doubled each time (or Retry-After).")
    concurrency: int = Field(4, ge=1, description="openai: requests in flight at once.")

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> "LabelerConfig":
        if self.backend in ("hf", "openai") and not self.model:
            raise ValueError(f"backend {self.backend!r} needs model: a judge model "
                             + ("directory or hub id" if self.backend == "hf" else "name served at base_url"))
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url, e.g. http://127.0.0.1:8000/v1")
        return self


def make_labeler(config: LabelerConfig) -> Labeler:
    """The labeler a config describes, with its constitution loaded and validated."""
    if config.backend == "oracle":
        return OracleLabeler()
    constitution = load_constitution(config.constitution)
    if config.backend == "hf":
        return HFLabeler.from_pretrained(config.model, device=config.device, constitution=constitution,
                                         aspects=config.aspects, batch_size=config.batch_size)
    return OpenAILabeler(config.base_url, config.model, constitution=constitution, aspects=config.aspects,
                         key_env=config.key_env, timeout_s=config.timeout_s, max_retries=config.max_retries,
                         backoff_s=config.backoff_s, concurrency=config.concurrency)
