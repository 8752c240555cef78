"""Rollouts for RL on a chat model: sample responses, then score their tokens under any policy.

A `RolloutBatch` keeps the prompt left-padded and the response right-padded, so response position t of
every row is the same column and the PPO math (`advantages`, `ppo_loss`) works on [batch, seq] tensors.
The sampler's log-probabilities come from the logits it sampled with (temperature-scaled, before top-p),
which equal those of a full forward pass with the same position ids (`score_tokens`, as the learner and the
reference compute them; a test checks the two agree), so sampling needs no second forward pass.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from safelatent.methods.ppo_loss import token_logprobs
from safelatent.models.generate import chat_prompt


@dataclass(frozen=True)
class RolloutBatch:
    """Sampled responses with everything PPO needs; tensors are on the CPU unless moved with `to`."""

    prompt_ids: torch.Tensor  # [batch, prompt_len], left-padded
    prompt_mask: torch.Tensor  # [batch, prompt_len]
    response_ids: torch.Tensor  # [batch, response_len], right-padded after the end-of-turn token
    response_mask: torch.Tensor  # [batch, response_len], 1 on generated tokens (end-of-turn included)
    logprobs: torch.Tensor  # [batch, response_len], of the sampling policy
    group_ids: torch.Tensor  # [batch], responses to the same prompt share an id
    prompts: tuple[str, ...]
    responses: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: torch.device | str) -> "RolloutBatch":
        return replace(self, **{field.name: getattr(self, field.name).to(device) for field in fields(self)
                                if isinstance(getattr(self, field.name), torch.Tensor)})

    def select(self, indices: Sequence[int] | torch.Tensor) -> "RolloutBatch":
        """The rows at `indices` (a minibatch)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        chosen = index.tolist()
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return RolloutBatch(**{name: value[index.to(value.device)] if isinstance(value, torch.Tensor)
                               else tuple(value[i] for i in chosen) for name, value in values.items()})

    def with_logprobs(self, logprobs: torch.Tensor) -> "RolloutBatch":
        return replace(self, logprobs=logprobs)


def sequence_inputs(batch: RolloutBatch) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position_ids of prompt + response, positions counted from the first real
    token so a left-padded row sees the positions it was sampled with."""
    attention_mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": torch.cat([batch.prompt_ids, batch.response_ids], dim=1),
            "attention_mask": attention_mask, "position_ids": position_ids}


def logits_to_keep(batch: RolloutBatch) -> int:
    """How many final positions' logits PPO needs: those predicting the response tokens (and the one after the
    last, which `response_logits` drops). Skipping the prompt positions saves the output layer's work there."""
    return batch.response_ids.shape[1] + 1


def response_logits(logits: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """The [batch, response_len, vocab] logits that predict each response token, from logits of every position
    or of the last `logits_to_keep(batch)` positions only."""
    response_len = batch.response_ids.shape[1]
    start = batch.prompt_ids.shape[1] - 1 if logits.shape[1] > response_len + 1 else 0
    return logits[:, start:start + response_len]


def response_values(values: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """The [batch, response_len] value estimates of the states before each response token."""
    start = batch.prompt_ids.shape[1] - 1
    return values[:, start:start + batch.response_ids.shape[1]]


def score_tokens(model: nn.Module, batch: RolloutBatch, temperature: float = 1.0,
                 micro_batch_size: int = 64) -> torch.Tensor:
    """[batch, response_len] log-probabilities of the response tokens under `model` (no gradient), 0 on padding."""
    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad():
        for start in range(0, len(batch), micro_batch_size):
            part = batch.select(range(start, min(start + micro_batch_size, len(batch)))).to(device)
            logits = model(**sequence_inputs(part), use_cache=False, logits_to_keep=logits_to_keep(part)).logits
            scaled = response_logits(logits, part) / max(temperature, 1e-6)
            chunks.append((token_logprobs(scaled, part.response_ids) * part.response_mask).cpu())
    return torch.cat(chunks)


@torch.no_grad()
def sample(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
           samples_per_prompt: int = 1, max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
           seed: int | None = None, first_group_id: int = 0) -> RolloutBatch:
    """Sample `samples_per_prompt` responses to each prompt (one chat user turn each), with their log-probs."""
    if temperature <= 0:
        raise ValueError(f"RL rollouts sample; temperature must be > 0, got {temperature}")
    if not prompts:
        raise ValueError("no prompts to sample from")
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    repeated = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer([chat_prompt(tokenizer, prompt) for prompt in repeated], return_tensors="pt",
                            padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = padding_side
    output = model.generate(**encoded, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, output_logits=True, return_dict_in_generate=True)
    response_ids = output.sequences[:, encoded["input_ids"].shape[1]:]
    response_mask = _through_first_eos(response_ids, tokenizer.eos_token_id)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids,
                                                                                  tokenizer.pad_token_id))
    groups = torch.arange(len(prompts)).repeat_interleave(samples_per_prompt) + first_group_id
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    batch = RolloutBatch(prompt_ids=encoded["input_ids"].cpu(), prompt_mask=encoded["attention_mask"].cpu(),
                         response_ids=response_ids.cpu(), response_mask=response_mask.cpu(),
                         logprobs=torch.zeros(response_ids.shape), group_ids=groups,
                         prompts=tuple(repeated), responses=tuple(text.strip() for text in texts))
    logits = torch.stack(output.logits, dim=1) / temperature
    return batch.with_logprobs((token_logprobs(logits, response_ids) * response_mask).cpu())


def _through_first_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first end-of-turn token of each row (everything when there is none)."""
    is_eos = (response_ids == eos_token_id).long()
    before_or_at_first = (is_eos.cumsum(dim=1) - is_eos) == 0
    return before_or_at_first.long()


def concat_batches(batches: Sequence[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """One batch from several (say, one per rollout worker): prompts re-padded on the left, responses on the right.

    Group ids are kept as they are, so shards must have been given disjoint ids (`first_group_id`).
    """
    if not batches:
        raise ValueError("no rollout batches to concatenate")
    if len(batches) == 1:
        return batches[0]
    prompt_len = max(batch.prompt_ids.shape[1] for batch in batches)
    response_len = max(batch.response_ids.shape[1] for batch in batches)

    def padded(tensor: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
        extra = width - tensor.shape[1]
        if extra == 0:
            return tensor
        fill = torch.full((tensor.shape[0], extra), value, dtype=tensor.dtype)
        return torch.cat([fill, tensor] if left else [tensor, fill], dim=1)

    return RolloutBatch(
        prompt_ids=torch.cat([padded(b.prompt_ids, prompt_len, pad_token_id, True) for b in batches]),
        prompt_mask=torch.cat([padded(b.prompt_mask, prompt_len, 0, True) for b in batches]),
        response_ids=torch.cat([padded(b.response_ids, response_len, pad_token_id, False) for b in batches]),
        response_mask=torch.cat([padded(b.response_mask, response_len, 0, False) for b in batches]),
        logprobs=torch.cat([padded(b.logprobs, response_len, 0.0, False) for b in batches]),
        group_ids=torch.cat([b.group_ids for b in batches]),
        prompts=tuple(prompt for b in batches for prompt in b.prompts),
        responses=tuple(response for b in batches for response in b.responses))


def split_by_groups(batch: RolloutBatch, parts: int) -> list[RolloutBatch]:
    """`parts` slices of equal size that never split a group (responses to one prompt stay together)."""
    if len(batch) % parts:
        raise ValueError(f"{len(batch)} rollouts cannot be split evenly over {parts} learners")
    size = len(batch) // parts
    slices = [batch.select(range(start, start + size)) for start in range(0, len(batch), size)]
    for left, right in itertools.pairwise(slices):
        if left.group_ids[-1] == right.group_ids[0]:
            raise ValueError(f"splitting {len(batch)} rollouts over {parts} learners would cut a prompt's group; "
                             "make prompts per step a multiple of the number of learners")
    return slices
