"""Safety direction transfer: learn a safety direction in a source model, carry it to a target model (DESIGN 6.6).

With s(p) the mean-pooled states of prompt p at a chosen site (decoder layer ℓ's output, or any module whose
output is a sequence of states), over every token the model reads for p (its chat template included):

    source:       v_src = mean_i [s_src(p_i^safe) − s_src(p_i^unsafe)]        over minimal safe/unsafe pairs
    anchors:      X = s_src(a_j), Y = s_tgt(a_j)                               over benign anchor texts only
    map:          W fit on (X, Y)  (ridge, Procrustes or MLP: safelatent.methods.alignment_maps)
    transfer:     v_t = Wᵀ v_src   (MLP: mean_j f(x_j + v_src) − f(x_j))
    calibration:  v̂ = v_t/‖v_t‖ · σ_t,  σ_t = sqrt(mean_j ‖y_j − ȳ‖²)  (the RMS norm of the centred anchors)
    steering:     e' = e + α·v̂ at the target's site (safelatent.models.steering)

Sign. v points from unsafe to safe, and ADDING it makes the micro-world models safer: the state of a harmful
request moves towards its safe twin's ("secure a database" rather than "break into it") and the
helpful-but-unsafe model stops writing the harmful payload, while subtracting it makes the model less safe
(the sign check in docs/direction_transfer.md measures both on the GPT-2 micro-world model). The refusal
direction of refusal-direction work, mean(harmful) − mean(harmless), points the other way.

The target side never sees unsafe data. Its states come from `BenignAnchors`, which can only be built from
rows of kind benign or borderline (`BenignAnchors.from_rows` rejects anything else), and
`anchor_states` takes nothing but `BenignAnchors`. Safe/unsafe pairs (`SafetyPairs`) go to the source
model only. The *native* direction (the same formula on the target model's own pairs) is a baseline for
reports. It is never part of a transfer.
"""

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from safelatent.errors import SafelatentError
from safelatent.methods.alignment_maps import AlignmentMap
from safelatent.models.generate import chat_prompt
from safelatent.models.steering import SiteRecorder, SteeringSite

BENIGN_KINDS = frozenset({"benign", "borderline"})
PAIR_KIND = "pair"
_FROM_ROWS = object()  # only the checked constructors may build BenignAnchors


class HarmfulDataError(SafelatentError, ValueError):
    """Unsafe data was offered where only benign data is allowed (the target side of a transfer)."""


class BenignAnchors:
    """Anchor texts for fitting an alignment map, every one from a benign or borderline row.

    Build with `BenignAnchors.from_rows(rows)`; rows of any other kind (harmful, jailbreak, pair, ...) are
    refused, so whatever holds a BenignAnchors holds benign data only.
    """

    __slots__ = ("kinds", "texts")

    def __init__(self, texts: Sequence[str], kinds: Sequence[str], *, _token: object = None):
        if _token is not _FROM_ROWS:
            raise TypeError("build BenignAnchors with BenignAnchors.from_rows(rows), which checks every row's kind")
        if not texts:
            raise ValueError("benign anchors need at least one text; the rows given had none")
        object.__setattr__(self, "texts", tuple(texts))
        object.__setattr__(self, "kinds", tuple(kinds))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("BenignAnchors are immutable")

    def __reduce__(self):  # Ray and pickle rebuild them through the checked constructor
        return (_rebuild_anchors, (self.texts, self.kinds))

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping]) -> "BenignAnchors":
        """Anchors from micro-world (or benchmark-like) rows with `kind` and `prompt`; only benign/borderline kinds."""
        rows = list(rows)
        refused: dict[str, int] = {}
        for row in rows:
            kind = row.get("kind")
            if kind not in BENIGN_KINDS:
                refused[str(kind)] = refused.get(str(kind), 0) + 1
        if refused:
            counts = ", ".join(f"{count} of kind {kind!r}" for kind, count in sorted(refused.items()))
            raise HarmfulDataError(f"the target side of a direction transfer takes benign data only, but the anchor "
                                   f"rows include {counts}; pass rows of kind {' or '.join(sorted(BENIGN_KINDS))}")
        texts = [row["prompt"] for row in rows]
        if not all(isinstance(text, str) and text for text in texts):
            raise ValueError("every anchor row needs a non-empty string 'prompt'")
        return cls(texts, [row["kind"] for row in rows], _token=_FROM_ROWS)

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return f"BenignAnchors({len(self.texts)} texts)"


def _rebuild_anchors(texts: Sequence[str], kinds: Sequence[str]) -> BenignAnchors:
    return BenignAnchors.from_rows({"kind": kind, "prompt": text} for text, kind in zip(texts, kinds, strict=True))


@dataclass(frozen=True)
class SafetyPairs:
    """Minimal safe/unsafe prompt pairs (same template, one slot changed), for the source direction."""

    safe: tuple[str, ...]
    unsafe: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.safe or len(self.safe) != len(self.unsafe):
            raise ValueError(f"safety pairs need as many safe as unsafe prompts, at least one; got {len(self.safe)} "
                             f"safe and {len(self.unsafe)} unsafe")

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping]) -> "SafetyPairs":
        """From micro-world rows of kind pair (`prompt` is the unsafe side, `pair_prompt` the safe side)."""
        rows = list(rows)
        other = sorted({str(row.get("kind")) for row in rows if row.get("kind") != PAIR_KIND})
        if other:
            raise ValueError(f"safety pairs come from rows of kind {PAIR_KIND!r}; got rows of kind {', '.join(other)}")
        return cls(tuple(row["pair_prompt"] for row in rows), tuple(row["prompt"] for row in rows))

    def __len__(self) -> int:
        return len(self.safe)


def sample_rows(rows: Iterable[Mapping], kinds: Iterable[str], count: int, seed: int) -> list[dict]:
    """At most `count` rows of the given kinds, drawn by a seeded shuffle (kept in a stable order)."""
    wanted = set(kinds)
    chosen = [dict(row) for row in rows if row["kind"] in wanted]
    random.Random(seed).shuffle(chosen)
    return chosen[:count]


@torch.no_grad()
def mean_pooled_states(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], site: SteeringSite,
                       *, chat: bool | None = None, batch_size: int = 64) -> torch.Tensor:
    """s(p) for each text: the site's output states averaged over the text's tokens, [len(texts), d] float32.

    chat: wrap each text in the tokenizer's chat template as a user turn, as the model reads prompts when it
    replies (default: when the tokenizer has a chat template; an encoder without one reads the bare text).
    """
    if not texts:
        raise ValueError("mean_pooled_states needs at least one text")
    use_chat = getattr(tokenizer, "chat_template", None) is not None if chat is None else chat
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    pooled: list[torch.Tensor] = []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            encoded = tokenizer([chat_prompt(tokenizer, text) if use_chat else text for text in chunk],
                                return_tensors="pt", padding=True, add_special_tokens=not use_chat)
            batch = {name: encoded[name].to(device) for name in ("input_ids", "attention_mask")}
            with SiteRecorder(model, site) as recorder:
                model(**batch)
            states = recorder.states[-1].float()
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled.append(((states * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu())
    finally:
        tokenizer.padding_side = padding_side
    return torch.cat(pooled)


def safety_direction(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: SafetyPairs, site: SteeringSite,
                     batch_size: int = 64) -> torch.Tensor:
    """v = mean_i [s(p_i^safe) − s(p_i^unsafe)] in this model, [d]; adding it makes the model safer (see the
    module docstring). On the source model it is v_src; on the target it is the native baseline."""
    if not isinstance(pairs, SafetyPairs):
        raise TypeError(f"safety_direction takes SafetyPairs, got {type(pairs).__name__}")
    safe = mean_pooled_states(model, tokenizer, pairs.safe, site, batch_size=batch_size)
    unsafe = mean_pooled_states(model, tokenizer, pairs.unsafe, site, batch_size=batch_size)
    return (safe - unsafe).mean(0)


def anchor_states(model: nn.Module, tokenizer: PreTrainedTokenizerBase, anchors: BenignAnchors, site: SteeringSite,
                  batch_size: int = 64) -> torch.Tensor:
    """X (source) or Y (target): a model's states of the anchors [n, d]; benign anchors only, anything else is
    refused, so the target side of a transfer reads nothing but benign data."""
    if not isinstance(anchors, BenignAnchors):
        raise HarmfulDataError(f"anchor states are read from BenignAnchors only (built with "
                               f"BenignAnchors.from_rows), got {type(anchors).__name__}")
    return mean_pooled_states(model, tokenizer, anchors.texts, site, batch_size=batch_size)


def anchor_scale(target_states: torch.Tensor) -> float:
    """σ_t = sqrt(mean_j ‖y_j − ȳ‖²): how far a typical anchor state lies from the anchors' mean."""
    if target_states.dim() != 2 or target_states.shape[0] < 2:
        raise ValueError(f"the anchor scale needs at least 2 anchor states [n, d], got {tuple(target_states.shape)}")
    centred = target_states.double() - target_states.double().mean(0)
    return float(centred.pow(2).sum(1).mean().sqrt())


def calibrate(direction: torch.Tensor, scale: float) -> torch.Tensor:
    """v̂ = v/‖v‖ · σ_t, so α = 1 moves a state by a typical anchor's distance from the anchors' mean."""
    norm = float(direction.norm())
    if not norm or not torch.isfinite(direction).all():
        raise ValueError(f"cannot calibrate a direction of norm {norm}; the transfer produced no direction")
    return (direction.double() / norm * scale).float()


@dataclass(frozen=True)
class TransferredDirection:
    """A direction carried into the target: raw v_t, calibrated v̂, σ_t, and the map that carried it."""

    map_name: str
    raw: torch.Tensor
    calibrated: torch.Tensor
    sigma: float


def transfer_direction(alignment: AlignmentMap, source_direction: torch.Tensor,
                       target_states: torch.Tensor) -> TransferredDirection:
    """v̂ from a fitted map, v_src and the target's anchor states Y (which give σ_t)."""
    raw = alignment.transfer(source_direction)
    sigma = anchor_scale(target_states)
    return TransferredDirection(alignment.name, raw, calibrate(raw, sigma), sigma)


def cosine(first: torch.Tensor, second: torch.Tensor) -> float:
    """cos(a, b) of two directions of one space."""
    if first.shape != second.shape:
        raise ValueError(f"cosine of directions of different shapes {tuple(first.shape)} and {tuple(second.shape)}")
    return float(torch.nn.functional.cosine_similarity(first.double(), second.double(), dim=0))
