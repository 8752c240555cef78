"""Labelled latents for fitting a safe-projection head: the residual stream while a model behaves well or badly.

A head that keeps a model harmless must recognise harmful *behaviour*, not harmful topics: the states at
the response positions while the model writes harmful compliance (label 1) against the states while it
refuses a harmful request, answers a benign task or answers a borderline one (label 0). A refusal and a
compliance to the same harmful prompt share the prompt, so the prompt's positions carry no label there;
for benign and borderline rows the prompt's positions are labelled 0 too, so the head leaves them alone.
Texts are teacher-forced through the chat template, so no sampling is involved.
"""

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safelatent.methods.rollout import RolloutBatch, sequence_inputs
from safelatent.models.generate import chat_prompt
from safelatent.models.hooks import HiddenStateRecorder

HARMFUL = 1
SAFE = 0


@dataclass(frozen=True)
class BehaviourExample:
    prompt: str
    response: str
    label: int  # HARMFUL: the response complies with a harmful request; SAFE otherwise
    label_prompt: bool  # whether the prompt's positions count too (benign and borderline prompts)


def behaviour_examples(rows: Iterable[dict], per_kind: int, seed: int) -> list[BehaviourExample]:
    """From micro-world rows: harmful and jailbreak requests with compliance (harmful) and with their refusal
    (safe), benign and borderline prompts with their helpful answer (safe); at most `per_kind` rows per kind."""
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    rng = random.Random(seed)
    examples: list[BehaviourExample] = []
    for kind in sorted(by_kind):
        chosen = list(by_kind[kind])
        rng.shuffle(chosen)
        for row in chosen[:per_kind]:
            if kind in ("harmful", "jailbreak"):
                examples.append(BehaviourExample(row["prompt"], row["helpful_response"], HARMFUL, False))
                examples.append(BehaviourExample(row["prompt"], row["refusal"], SAFE, False))
            elif kind in ("benign", "borderline"):
                examples.append(BehaviourExample(row["prompt"], row["helpful_response"], SAFE, True))
    labels = {example.label for example in examples}
    if labels != {HARMFUL, SAFE}:
        raise ValueError("fitting a safe-projection head needs harmful (or jailbreak) rows and benign or "
                         f"borderline rows; the rows given had kinds {sorted(by_kind) or 'none'}")
    return examples


@dataclass
class Latents:
    """Per layer, states [N, d] with labels [N] (HARMFUL / SAFE)."""

    states: dict[int, torch.Tensor]
    labels: torch.Tensor

    def split(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(harmful states, safe states) at `layer`."""
        states = self.states[layer]
        return states[self.labels == HARMFUL], states[self.labels == SAFE]


@torch.no_grad()
def collect_latents(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[BehaviourExample],
                    layers: Sequence[int], batch_size: int = 32) -> Latents:
    """Teacher-force every example and keep, per layer, the states at its labelled positions."""
    device = next(model.parameters()).device
    per_layer: dict[int, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        prompts = [chat_prompt(tokenizer, example.prompt) for example in batch]
        prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
        full_ids = [tokenizer(text + example.response, add_special_tokens=False)["input_ids"]
                    for text, example in zip(prompts, batch, strict=True)]
        width = max(len(ids) for ids in full_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in full_ids], device=device)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in full_ids], device=device)
        keep = torch.zeros(len(batch), width, dtype=torch.bool)
        for row, (example, prompt, full) in enumerate(zip(batch, prompt_ids, full_ids, strict=True)):
            keep[row, 0 if example.label_prompt else len(prompt):len(full)] = True
        with HiddenStateRecorder(model, layers) as recorder:
            model(input_ids=input_ids, attention_mask=attention)
        for layer, states in recorder.states.items():
            per_layer.setdefault(layer, []).append(states[-1].float().cpu()[keep])
        row_labels = torch.tensor([example.label for example in batch])
        labels.append(row_labels.unsqueeze(1).expand(-1, width)[keep])
    return Latents(states={layer: torch.cat(chunks) for layer, chunks in per_layer.items()}, labels=torch.cat(labels))


@torch.no_grad()
def rollout_latents(model: PreTrainedModel, batch: RolloutBatch, layer: int, harmful: Sequence[bool],
                    micro_batch_size: int = 32) -> Latents:
    """The states at layer ℓ over each sampled response's tokens, labelled HARMFUL for the rows in `harmful`
    (a judge's verdict on the response) and SAFE otherwise: what the policy itself does, not a scripted text."""
    if len(harmful) != len(batch):
        raise ValueError(f"{len(harmful)} verdicts for {len(batch)} responses")
    device = next(model.parameters()).device
    states, labels = [], []
    for start in range(0, len(batch), micro_batch_size):
        part = batch.select(range(start, min(start + micro_batch_size, len(batch)))).to(device)
        with HiddenStateRecorder(model, [layer]) as recorder:
            model(**sequence_inputs(part), use_cache=False, logits_to_keep=1)
        hidden = recorder.states[recorder.layers[0]][-1][:, part.prompt_ids.shape[1]:]
        keep = part.response_mask.bool()
        states.append(hidden[keep].float().cpu())
        verdicts = torch.tensor([HARMFUL if flag else SAFE for flag in harmful[start:start + len(part)]])
        labels.append(verdicts.to(keep.device).unsqueeze(1).expand_as(keep)[keep].cpu())
    return Latents(states={layer: torch.cat(states)}, labels=torch.cat(labels))


def merge_latents(first: Latents, second: Latents) -> Latents:
    """Both sets of states (on the layers they share) with their labels."""
    layers = sorted(set(first.states) & set(second.states))
    return Latents(states={layer: torch.cat([first.states[layer], second.states[layer]]) for layer in layers},
                   labels=torch.cat([first.labels, second.labels]))
