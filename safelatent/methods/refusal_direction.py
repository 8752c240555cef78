"""The refusal direction: difference of means of harmful and harmless prompt states, chosen among candidates.

Candidates (DESIGN 6.5, after refusal-direction work). For each position p among the last prompt positions
(the post-instruction tokens of the chat template: −1 is where the reply begins) and each decoder layer ℓ,

    r(p, ℓ) = mean_{x∈H} h_ℓ(x)[p] − mean_{x∈B} h_ℓ(x)[p]

over harmful prompts H and harmless prompts B (the training side). Adding r moves a state towards "harmful
request", which an instruction-tuned model answers with a refusal.

A partly aligned model refuses some harmful requests and answers others; for it "harmful" and "refused" are not
the same direction, and the mean harmful state can even sit on the answering side. The contrast is then the
model's own behaviour: H = the harmful prompts it refuses, B = the harmful prompts it answers (`split_by_refusal`,
by the first reply token). For a model that refuses every harmful request the two contrasts coincide.

Steering. The teacher adds α·r at layer ℓ. `where="all"` adds it at every position (prompt and reply);
`where="prompt_end"` only at the last prompt position, the point where the model decides how to reply. The
second is far gentler on what follows: on the micro-world base model, which was trained to comply, adding r
everywhere garbles replies long before it makes the model refuse, while adding it at the prompt's end makes it
refuse without hurting its benign answers (docs/safesteer.md).

Selection, on held-out prompts. For every candidate and strength α:
- refusal score on harmful prompts: the mean log-odds that the reply's first token starts a refusal,
  log P(refusal start) − log(1 − P(refusal start)), with the steering on (higher is better);
- KL on harmless prompts: KL(p_base ‖ p_steered) of the first reply token with the steering on (it must stay at
  most `max_kl`, so benign replies keep their start);
- the layer must lie in the first `max_layer_fraction` of the model (late layers only rewrite the output).
The chosen candidate has the highest refusal score among those passing both filters.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from safelatent.models.generate import encode_prompts
from safelatent.models.hooks import HiddenStateRecorder, Hook, add_vector, transform_hidden
from safelatent.models.layers import num_layers, resolve_layer

SteeringPlacement = Literal["all", "prompt_end"]
DEFAULT_REFUSAL_PREFIXES = ("I can't", "I won't", "Sorry", "I'm not able", "I cannot")


@dataclass(frozen=True)
class DirectionCandidate:
    position: int  # negative: counted from the end of the prompt
    layer: int
    direction: torch.Tensor  # r [d]

    @property
    def norm(self) -> float:
        return float(self.direction.norm())


@dataclass(frozen=True)
class CandidateScore:
    position: int
    layer: int
    scale: float
    refusal_score: float  # mean log-odds of a refusal start on harmful prompts, steered
    refusal_probability: float  # mean P(refusal start) on harmful prompts, steered
    harmless_kl: float  # mean KL(p_base ‖ p_steered) of the first reply token on harmless prompts
    passes: bool

    def to_json(self) -> dict:
        return {"position": self.position, "layer": self.layer, "scale": self.scale,
                "refusal_score": self.refusal_score, "refusal_probability": self.refusal_probability,
                "harmless_kl": self.harmless_kl, "passes": self.passes}


@dataclass(frozen=True)
class RefusalDirection:
    """The chosen direction and how to apply it: α·r at layer ℓ, at `where` positions."""

    direction: torch.Tensor
    layer: int
    position: int
    scale: float
    where: SteeringPlacement
    baseline_refusal_probability: float = 0.0
    scores: tuple[CandidateScore, ...] = field(default=(), compare=False)

    def summary(self) -> dict:
        chosen = next((score for score in self.scores if (score.position, score.layer, score.scale) ==
                       (self.position, self.layer, self.scale)), None)
        return {"layer": self.layer, "position": self.position, "scale": self.scale, "where": self.where,
                "norm": float(self.direction.norm()), "baseline_refusal_probability": self.baseline_refusal_probability,
                "chosen": chosen.to_json() if chosen else None, "candidates": len(self.scores)}


class PromptEndAddition:
    """h_ℓ ← h_ℓ + v at one column: `column` when set (teacher forcing a prompt+reply batch whose prompts all end
    at that column, as left-padded generation leaves them), else the last position of any multi-token forward
    (the prompt's prefill during generation; the cached one-token steps that follow are left alone)."""

    def __init__(self, model: nn.Module, layer: int, vector: torch.Tensor):
        self.column: int | None = None
        self._vector = vector.detach()
        self._hook = transform_hidden(model, layer, self._add)

    def _add(self, hidden: torch.Tensor) -> torch.Tensor:
        column = self.column if self.column is not None else (hidden.shape[1] - 1 if hidden.shape[1] > 1 else None)
        if column is None or column >= hidden.shape[1]:
            return hidden
        shifted = hidden.clone()
        shifted[:, column] += self._vector.to(device=hidden.device, dtype=hidden.dtype)
        return shifted

    def remove(self) -> None:
        self._hook.remove()

    def __enter__(self) -> "PromptEndAddition":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def steer(model: nn.Module, direction: torch.Tensor, layer: int, scale: float,
          where: SteeringPlacement = "all") -> Hook | PromptEndAddition:
    """Activation addition of scale·r at layer ℓ; remove() (or the with block) restores the model exactly."""
    if where == "all":
        return add_vector(model, layer, direction.detach().float(), scale)
    if where == "prompt_end":
        return PromptEndAddition(model, layer, scale * direction.detach().float())
    raise ValueError(f"unknown steering placement {where!r}; use 'all' or 'prompt_end'")


def steer_with(model: nn.Module, refusal: RefusalDirection) -> Hook | PromptEndAddition:
    return steer(model, refusal.direction, refusal.layer, refusal.scale, refusal.where)


def refusal_token_ids(tokenizer: PreTrainedTokenizerBase, prefixes: Sequence[str] = DEFAULT_REFUSAL_PREFIXES
                      ) -> list[int]:
    """The distinct first tokens of the refusal prefixes, as the reply's first token."""
    ids = sorted({tokenizer(prefix, add_special_tokens=False)["input_ids"][0] for prefix in prefixes if prefix})
    if not ids:
        raise ValueError("give at least one refusal prefix (e.g. \"I can't\")")
    return ids


@torch.no_grad()
def prompt_states(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  layers: Sequence[int], positions: Sequence[int], batch_size: int = 64
                  ) -> dict[tuple[int, int], torch.Tensor]:
    """h_ℓ at the last prompt positions: {(position, layer): [n, d]} (positions negative, from the prompt's end)."""
    if not prompts:
        raise ValueError("prompt_states needs at least one prompt")
    if any(position >= 0 for position in positions):
        raise ValueError(f"positions count from the end of the prompt and must be negative, got {list(positions)}")
    chunks: dict[tuple[int, int], list[torch.Tensor]] = {}
    for batch in _batches(prompts, batch_size):
        encoded = encode_prompts(model, tokenizer, batch)
        with HiddenStateRecorder(model, layers) as recorder:
            model(**encoded)
        for layer, states in recorder.states.items():
            for position in positions:
                chunks.setdefault((position, layer), []).append(states[-1][:, position].float().cpu())
    return {key: torch.cat(value) for key, value in chunks.items()}


def split_by_refusal(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                     refusal_prefixes: Sequence[str] = DEFAULT_REFUSAL_PREFIXES, threshold: float = 0.5,
                     batch_size: int = 64) -> tuple[list[str], list[str]]:
    """(refused, answered): the prompts whose first reply token starts a refusal with probability above `threshold`,
    and the rest, as the model stands (with whatever hooks it carries)."""
    probabilities = torch.logsumexp(first_token_log_probs(model, tokenizer, prompts, batch_size)[
        :, refusal_token_ids(tokenizer, refusal_prefixes)], dim=-1).exp()
    refused = [prompt for prompt, probability in zip(prompts, probabilities, strict=True) if probability > threshold]
    answered = [prompt for prompt, probability in zip(prompts, probabilities, strict=True) if probability <= threshold]
    return refused, answered


def candidate_directions(model: nn.Module, tokenizer: PreTrainedTokenizerBase, harmful: Sequence[str],
                         harmless: Sequence[str], positions: Sequence[int] = (-1, -2),
                         layers: Sequence[int] | None = None, batch_size: int = 64) -> list[DirectionCandidate]:
    """r(p, ℓ) = mean_H h_ℓ[p] − mean_B h_ℓ[p] for every position and layer asked (all layers by default)."""
    layers = [resolve_layer(model, layer) for layer in (range(num_layers(model)) if layers is None else layers)]
    harmful_states = prompt_states(model, tokenizer, harmful, layers, positions, batch_size)
    harmless_states = prompt_states(model, tokenizer, harmless, layers, positions, batch_size)
    return [DirectionCandidate(position, layer, harmful_states[position, layer].mean(0)
                               - harmless_states[position, layer].mean(0))
            for position in positions for layer in layers]


@torch.no_grad()
def first_token_log_probs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                          batch_size: int = 64) -> torch.Tensor:
    """log p(first reply token) [n, V] for each prompt, with whatever hooks the model carries."""
    rows = []
    for batch in _batches(prompts, batch_size):
        logits = model(**encode_prompts(model, tokenizer, batch)).logits[:, -1].float()
        rows.append(torch.log_softmax(logits, dim=-1).cpu())
    return torch.cat(rows)


def refusal_log_odds(log_probs: torch.Tensor, refusal_ids: Sequence[int]) -> tuple[float, float]:
    """(mean log-odds, mean probability) that the first token starts a refusal."""
    log_refusal = torch.logsumexp(log_probs[:, list(refusal_ids)], dim=-1)
    log_rest = torch.log1p(-log_refusal.exp().clamp(max=1 - 1e-6))
    return float((log_refusal - log_rest).mean()), float(log_refusal.exp().mean())


def select_refusal_direction(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                             candidates: Sequence[DirectionCandidate], harmful: Sequence[str],
                             harmless: Sequence[str], scales: Sequence[float], *,
                             where: SteeringPlacement = "prompt_end", max_kl: float = 0.1,
                             max_layer_fraction: float = 0.8,
                             refusal_prefixes: Sequence[str] = DEFAULT_REFUSAL_PREFIXES,
                             batch_size: int = 64) -> RefusalDirection:
    """The candidate and strength that best induce refusal on `harmful` while the first token on `harmless` moves
    at most `max_kl` (held-out prompts: not the ones the candidates were estimated on)."""
    if not candidates:
        raise ValueError("no refusal-direction candidates to choose from")
    if not scales or any(scale <= 0 for scale in scales):
        raise ValueError(f"steering strengths must be positive, got {list(scales)}")
    refusal_ids = refusal_token_ids(tokenizer, refusal_prefixes)
    base_harmless = first_token_log_probs(model, tokenizer, harmless, batch_size)
    _, baseline_probability = refusal_log_odds(first_token_log_probs(model, tokenizer, harmful, batch_size),
                                               refusal_ids)
    deepest = max_layer_fraction * num_layers(model)
    scores: list[CandidateScore] = []
    for candidate in candidates:
        for scale in scales:
            with steer(model, candidate.direction, candidate.layer, scale, where):
                score, probability = refusal_log_odds(first_token_log_probs(model, tokenizer, harmful, batch_size),
                                                      refusal_ids)
                steered_harmless = first_token_log_probs(model, tokenizer, harmless, batch_size)
            kl = float((base_harmless.exp() * (base_harmless - steered_harmless)).sum(-1).mean())
            scores.append(CandidateScore(candidate.position, candidate.layer, float(scale), score, probability, kl,
                                         passes=kl <= max_kl and candidate.layer < deepest))
    passing = [score for score in scores if score.passes]
    if not passing:
        least = min(scores, key=lambda score: score.harmless_kl)
        raise ValueError(f"no refusal-direction candidate keeps the harmless first-token KL within {max_kl} in the "
                         f"first {max_layer_fraction:.0%} of the layers (smallest KL {least.harmless_kl:.3f} at "
                         f"layer {least.layer}, position {least.position}, scale {least.scale}); try smaller scales")
    best = max(passing, key=lambda score: (score.refusal_score, -score.scale))
    direction = next(candidate.direction for candidate in candidates
                     if (candidate.position, candidate.layer) == (best.position, best.layer))
    return RefusalDirection(direction=direction, layer=best.layer, position=best.position, scale=best.scale,
                            where=where, baseline_refusal_probability=baseline_probability, scores=tuple(scores))


def _batches(items: Sequence[str], size: int):
    for start in range(0, len(items), size):
        yield list(items[start:start + size])
