"""SafeSteer: distil a steered teacher into the model, only on a sparse set of safety tokens (DESIGN 6.5).

Teacher π_t = the base model with the refusal direction added (activation addition, `refusal_direction.steer`).
Student π_s = the model with LoRA adapters; with the adapters switched off it *is* the base, so the teacher
needs no second copy of the weights.

Safety tokens S. Sample short continuations from the teacher on harmless prompts; at every reply position
Δ(v) = log π_t(v) − log π_base(v); each position votes for its `top_k` tokens by Δ among the `pool` tokens the
teacher finds most likely there, and only where Δ(v) ≥ `min_gain` (without the pool, tokens neither model would
say win on noise: their probabilities are tiny and their ratio is large by chance; without the gain floor,
the many positions the steering barely changes outvote the few it does); S = the `num_tokens` tokens with the
most votes (ties: larger summed Δ), special tokens never. They are the tokens the steering
promotes ("I", "Sorry", "can't", ... on a model that learned to refuse).

Loss, on the student's own samples y ~ π_s for harmful prompts (on-policy), at every reply position:

    Σ_{v∈S} [π_s(v)·(log π_s(v) − log π_t(v)) − π_s(v) + π_t(v)]        (vocab_divergence.reverse_kl over S)

averaged over reply tokens and not renormalised over S. The two last terms make each summand ≥ 0 and zero only
where student and teacher agree, so the minimum is the teacher's distribution on S. Only S is constrained; the
rest of the vocabulary is free, which keeps the student's benign behaviour.
"""

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from safelatent.data.responses import is_refusal
from safelatent.methods.masked import masked_mean
from safelatent.methods.refusal_direction import PromptEndAddition, RefusalDirection, steer_with
from safelatent.methods.rollout import RolloutBatch, logits_to_keep, response_logits, sample, sequence_inputs
from safelatent.methods.vocab_divergence import reverse_kl


@dataclass(frozen=True)
class SafetyTokens:
    ids: tuple[int, ...]
    votes: tuple[int, ...]
    tokens: tuple[str, ...]

    def to_json(self) -> list[dict]:
        return [{"id": token_id, "token": token, "votes": votes}
                for token_id, token, votes in zip(self.ids, self.tokens, self.votes, strict=True)]


@contextmanager
def base_weights(model: nn.Module):
    """The model with its LoRA adapters switched off: the frozen base."""
    if not hasattr(model, "disable_adapter"):
        raise TypeError(f"{type(model).__name__} has no adapters to switch off; SafeSteer trains a LoRA (peft) model")
    with model.disable_adapter():
        yield model


@contextmanager
def teacher(model: nn.Module, refusal: RefusalDirection, prompt_columns: int | None = None):
    """The steered base model. `prompt_columns`: when teacher-forcing a batch whose prompts are left-padded to
    that many columns (prompt-end steering then applies at the last of them)."""
    with base_weights(model), steer_with(model, refusal) as hook:
        if isinstance(hook, PromptEndAddition) and prompt_columns is not None:
            hook.column = prompt_columns - 1
        yield model


def reply_log_probs(model: nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """log-softmax of the logits predicting each reply token, [batch, reply_len, V]."""
    logits = model(**sequence_inputs(batch), use_cache=False, logits_to_keep=logits_to_keep(batch)).logits
    return torch.log_softmax(response_logits(logits, batch).float(), dim=-1)


@torch.no_grad()
def vote_safety_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase, refusal: RefusalDirection,
                       harmless_prompts: Sequence[str], *, num_tokens: int = 50, top_k: int = 10,
                       pool: int = 20, min_gain: float = 0.5, max_new_tokens: int = 16, temperature: float = 1.0,
                       seed: int = 0, batch_size: int = 32) -> SafetyTokens:
    """The safety tokens S: what the steering promotes in the teacher's own continuations of harmless prompts."""
    if not harmless_prompts:
        raise ValueError("voting needs harmless prompts")
    if num_tokens < 1 or top_k < 1 or pool < top_k:
        raise ValueError(f"need num_tokens >= 1 and pool >= top_k >= 1, got num_tokens={num_tokens}, top_k={top_k}, "
                         f"pool={pool}")
    device = next(model.parameters()).device
    banned = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    votes: torch.Tensor | None = None
    gains: torch.Tensor | None = None
    for number, start in enumerate(range(0, len(harmless_prompts), batch_size)):
        prompts = list(harmless_prompts[start:start + batch_size])
        with teacher(model, refusal):
            batch = sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           seed=seed + number).to(device)
        with teacher(model, refusal, prompt_columns=batch.prompt_ids.shape[1]):
            steered = reply_log_probs(model, batch)
        with base_weights(model):
            base = reply_log_probs(model, batch)
        steered[..., banned.to(device)] = float("-inf")
        plausible = steered.topk(min(pool, steered.shape[-1]), dim=-1).indices
        delta = torch.full_like(steered, float("-inf")).scatter(-1, plausible, 0.0) + (steered - base)
        delta[..., banned.to(device)] = float("-inf")
        top = delta.topk(min(top_k, delta.shape[-1]), dim=-1)
        mask = batch.response_mask.bool().unsqueeze(-1).expand_as(top.indices) & (top.values >= min_gain)
        chosen, chosen_gain = top.indices[mask].cpu(), top.values[mask].cpu()
        if votes is None:
            votes, gains = torch.zeros(delta.shape[-1]), torch.zeros(delta.shape[-1], dtype=torch.float64)
        votes += torch.bincount(chosen, minlength=delta.shape[-1]).float()
        gains.index_add_(0, chosen, chosen_gain.double())
    order = sorted((token for token in range(len(votes)) if votes[token] > 0),
                   key=lambda token: (-float(votes[token]), -float(gains[token])))[:num_tokens]
    return SafetyTokens(ids=tuple(order), votes=tuple(int(votes[token]) for token in order),
                        tokens=tuple(tokenizer.decode([token]) for token in order))


class SafeSteerDistiller:
    """One on-policy distillation step at a time: sample from the student, score under student and teacher, step.

    `model` is the peft model (sampling and the teacher use it directly); `trained` is what the loss backpropagates
    through, the same model or its DistributedDataParallel wrapper.
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, refusal: RefusalDirection,
                 safety_ids: Sequence[int], optimizer: torch.optim.Optimizer, *, trained: nn.Module | None = None,
                 max_new_tokens: int = 24, temperature: float = 1.0, max_grad_norm: float = 1.0):
        if not safety_ids:
            raise ValueError("SafeSteer needs at least one safety token")
        self.model, self.tokenizer, self.refusal = model, tokenizer, refusal
        self.safety_ids = torch.tensor(list(safety_ids), dtype=torch.long)
        self.optimizer = optimizer
        self.trained = trained if trained is not None else model
        self.max_new_tokens, self.temperature, self.max_grad_norm = max_new_tokens, temperature, max_grad_norm
        self.device = next(model.parameters()).device

    def step(self, harmful_prompts: Sequence[str], seed: int) -> dict[str, float]:
        self.model.eval()
        batch = sample(self.model, self.tokenizer, harmful_prompts, max_new_tokens=self.max_new_tokens,
                       temperature=self.temperature, seed=seed).to(self.device)
        with torch.no_grad(), teacher(self.model, self.refusal, prompt_columns=batch.prompt_ids.shape[1]):
            teacher_log = reply_log_probs(self.model, batch)
        self.model.train()
        student_log = reply_log_probs(self.trained, batch)
        safety = self.safety_ids.to(self.device)
        loss = reverse_kl(student_log, teacher_log, batch.response_mask, vocab=safety)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                   self.max_grad_norm)
        self.optimizer.step()
        first = batch.response_mask[:, :1].float()
        with torch.no_grad():
            student_mass = student_log[:, :1].index_select(-1, safety).exp().sum(-1)
            teacher_mass = teacher_log[:, :1].index_select(-1, safety).exp().sum(-1)
        return {
            "loss": float(loss.detach()),
            "grad_norm": float(grad_norm),
            "first_token_safety_mass/student": float(masked_mean(student_mass, first)),
            "first_token_safety_mass/teacher": float(masked_mean(teacher_mass, first)),
            "sample_refusal_rate": sum(is_refusal(text) for text in batch.responses) / len(batch),
            "response_length": float(batch.response_mask.sum(1).float().mean()),
        }
