"""Batched incremental decoding with a KV cache, where every request keeps its own sampling parameters.

`stream()` runs one batch of requests step by step and yields, after each step, a `Delta` per request (None
once that request has finished): the new text it may release and, on its last delta, why it stopped. One
batch can mix greedy and sampled requests, different `max_tokens`, stop strings and seeds, so a server can
batch whatever arrives together. Prompts are left-padded; position ids follow the real tokens, so a
request's tokens do not depend on what it was batched with (up to floating-point reduction order).

Text is released only when it is final: a trailing piece that could still become a stop string, or an
incomplete multi-byte character, is held back until the next token settles it.
Any hooks on the model (a safe-projection head) run in every forward pass, prompt and decode steps alike.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safelatent.models.layers import text_config

FINISH_STOP = "stop"  # end-of-sequence token or a stop string
FINISH_LENGTH = "length"  # max_tokens reached


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI's sampling parameters for one request. temperature 0 is greedy."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not text for text in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclass
class Delta:
    """What one decode step adds to one request's completion."""

    text: str
    completion_tokens: int  # generated so far, including this step
    finish_reason: str | None = None  # set on the request's last delta


@dataclass
class _Row:
    params: SamplingParams
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    released: int = 0  # characters of the decoded completion already released
    finished: bool = False


class Decoder:
    """Generates continuations of token-id prompts for one model and tokenizer."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.context_length = context_length(model)

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a conversation, ending where the assistant's reply begins (the model's chat template)."""
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def stream(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
               ) -> Iterator[list[Delta | None]]:
        """Decode a batch; after each step, one entry per request: its Delta, or None once it has finished."""
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling parameter sets")
        if not prompts:
            return
        for index, (prompt, setting) in enumerate(zip(prompts, params, strict=True)):
            if not prompt:
                raise ValueError(f"prompt {index} has no tokens")
            if len(prompt) + setting.max_tokens > self.context_length:
                raise ValueError(f"prompt {index} has {len(prompt)} tokens; with max_tokens {setting.max_tokens} "
                                 f"that exceeds the model's context of {self.context_length} tokens")
        rows = [_Row(setting, _generator(setting.seed)) for setting in params]
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for index, prompt in enumerate(prompts):
            input_ids[index, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            attention[index, width - len(prompt):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = None
        while True:
            output = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                                past_key_values=cache, use_cache=True)
            cache = output.past_key_values
            next_ids = self._sample(output.logits[:, -1, :], rows)
            deltas: list[Delta | None] = []
            for row, token in zip(rows, next_ids, strict=True):
                deltas.append(None if row.finished else self._advance(row, token))
            yield deltas
            if all(row.finished for row in rows):
                return
            feed = [self.pad_id if row.finished else row.token_ids[-1] for row in rows]
            input_ids = torch.tensor(feed, dtype=torch.long, device=self.device).unsqueeze(1)
            attention = torch.cat([attention, torch.ones_like(input_ids)], dim=1)
            positions = positions[:, -1:] + 1

    def complete(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
                 ) -> list[tuple[str, int, str]]:
        """Run `stream` to the end: (text, completion tokens, finish reason) per request."""
        texts = [""] * len(prompts)
        results: list[tuple[str, int, str] | None] = [None] * len(prompts)
        for deltas in self.stream(prompts, params):
            for index, delta in enumerate(deltas):
                if delta is not None:
                    texts[index] += delta.text
                    if delta.finish_reason is not None:
                        results[index] = (texts[index], delta.completion_tokens, delta.finish_reason)
        return [result for result in results if result is not None]

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        logits = logits.float()
        chosen = logits.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            if row.finished or row.params.temperature == 0:
                continue
            probabilities = torch.softmax(logits[index] / row.params.temperature, dim=-1)
            if row.params.top_p < 1:
                probabilities = _nucleus(probabilities, row.params.top_p)
            chosen[index] = int(torch.multinomial(probabilities.cpu(), 1, generator=row.generator).item())
        return chosen

    def _advance(self, row: _Row, token: int) -> Delta:
        """Add one token to a row; release the text that is now final; finish on EOS, a stop string or length."""
        if token in self.eos_ids:
            row.finished = True
            return Delta(self._pending(row, final=True), len(row.token_ids), FINISH_STOP)
        row.token_ids.append(token)
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        for stop in row.params.stop:
            at = text.find(stop, max(0, row.released - len(stop)))
            if at != -1:
                row.finished = True
                released = text[row.released:at] if at > row.released else ""
                row.released = max(row.released, at)
                return Delta(released, len(row.token_ids), FINISH_STOP)
        if len(row.token_ids) >= row.params.max_tokens:
            row.finished = True
            return Delta(self._pending(row, final=True, text=text), len(row.token_ids), FINISH_LENGTH)
        return Delta(self._pending(row, final=False, text=text), len(row.token_ids))

    def _pending(self, row: _Row, *, final: bool, text: str | None = None) -> str:
        """The text not yet released that is safe to release now."""
        if text is None:
            text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its other bytes
                end = len(text.rstrip("\ufffd"))
            end = min(end, _stop_safe_end(text, row.params.stop, row.released))
        piece = text[row.released:end] if end > row.released else ""
        row.released = max(row.released, end)
        return piece


def context_length(model: PreTrainedModel) -> int:
    """How many positions the model can attend over (prompt plus completion)."""
    config = text_config(model)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the context length of a {type(model).__name__}; its config names none of "
                     "max_position_embeddings, n_positions, max_sequence_length, seq_length")


def _stop_safe_end(text: str, stops: tuple[str, ...], released: int) -> int:
    """Where releasable text ends: before any suffix of `text` that is a proper prefix of a stop string."""
    end = len(text)
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text) - released), 0, -1):
            if text.endswith(stop[:length]):
                end = min(end, len(text) - length)
                break
    return end


def _nucleus(probabilities: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p; renormalise."""
    ordered, order = probabilities.sort(descending=True)
    before = ordered.cumsum(-1) - ordered
    ordered = torch.where(before < top_p, ordered, torch.zeros_like(ordered))
    kept = torch.zeros_like(probabilities).scatter(-1, order, ordered)
    return kept / kept.sum()


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
