"""ES2, embedding space separation: push harmful and harmless prompt states apart, KL-anchored (DESIGN 6.4).

On the chosen layers L, with h_ℓ(x) the state at the last prompt position (where the reply begins):

    d_ℓ    = ‖mean_{x∈H} h_ℓ(x) − mean_{x∈B} h_ℓ(x)‖                 class-mean distance, per batch
    L_sep  = mean_ℓ relu(m·d_ℓ⁰ − d_ℓ) / s_ℓ                           bounded: no reward beyond m times the base
    L_KL   = mean_t KL(p_base(·|x_<t) ‖ p_θ(·|x_<t))                    over the tokens of harmless texts
    L_dec  = mean_x KL(p_base(·|x) ‖ p_θ(·|x)) of the first reply token    over the same harmful and harmless prompts
    L_att  = mean_{x∈H} KL(p_base(·|x) ‖ p_θ(·|x; h_a ← h_a + ε·r_a·u))  the same, under the embedding attack
    loss   = L_sep + γ·L_dec + α·L_att + β·L_KL

d_ℓ⁰ and s_ℓ (the RMS state norm) are measured once on the base model (`separation_reference`), so the margin m
says "m times as far apart as the base had them" and the loss is in units of the layer's state size.

`relative=True` (the default) measures the distance in units of the current states' RMS norm r_ℓ instead:
L_sep = mean_ℓ relu(m·d_ℓ⁰/s_ℓ − d_ℓ/r_ℓ). Without it the model can meet the margin by inflating every state
(the normalisation layers make that nearly free for the outputs, so the KL anchor does not stop it): on the
micro-world RLAIF-PPO model, 60 absolute steps grew the class distance 4.5× but the state norm 2.7×
(docs/es2.md).

L_dec (weight γ, `decision_beta`) is ours: the KL anchor of DESIGN 6.4 covers harmless inputs only, and moving
the harmful states where the starting model's refusal does not read them unlearns the refusal. On the
RLAIF-PPO model, 60 relative steps without it left 0 of 100 harmful test prompts refused (from 75). The
model trains with LoRA; switching the adapters off gives the base for the KL anchor, so no second copy of
the weights is needed. A separated model is harder to push across into "harmless" with a small perturbation
of its states: `evaluation.embedding_attack` measures exactly that.

L_att (weight α, `attack_beta`, off by default) is ours too: latent adversarial training against the attack
the report measures. At the attack layer a (one of L), u is the batch's unit harmful → safe direction
(mean_B − mean_H of the current states) and r_a their RMS norm, both detached; every step draws ε uniformly
from [0, `attack_budget`] and adds ε·r_a·u at every position of the harmful prompts, and the first reply
token must stay what the starting model says unattacked. It is computed from training prompts on the model
as it trains, while the report attacks with the test prompts' direction on the finished model.

With refusals given (`step(..., harmful_replies=...)`, the starting model's own greedy refusals of the harmful
prompts), L_att keeps the whole refusal instead of its first token: under the same attack, teacher-forced on
prompt + refusal, the KL to the unattacked starting model at every position that predicts a refusal token
(L_att-reply). On the micro-world the attack breaks refusals by garbling them after a correct first token
("I'm a harm a harm a germ"), which the first-token anchor does not see (docs/es2.md).
"""

import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from safelatent.methods.safesteer import base_weights
from safelatent.methods.vocab_divergence import forward_kl
from safelatent.models.generate import chat_prompt, encode_prompts
from safelatent.models.hooks import HiddenStateRecorder, add_vector
from safelatent.models.layers import num_layers, resolve_layer


def default_layers(model: nn.Module, every: int = 1) -> list[int]:
    """Layers from 25% to 75% of the depth, every `every`-th (at least one)."""
    count = num_layers(model)
    first, last = int(0.25 * count), max(int(0.25 * count), round(0.75 * count) - 1)
    return list(range(first, last + 1, max(every, 1)))


def class_distance(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """‖mean_H − mean_B‖ for states [n, d] and [m, d] (differentiable)."""
    if harmful.shape[0] == 0 or harmless.shape[0] == 0:
        raise ValueError("the class distance needs at least one harmful and one harmless state")
    return (harmful.mean(0) - harmless.mean(0)).norm()


def separation_loss(distances: dict[int, torch.Tensor], base_distances: dict[int, float],
                    base_scales: dict[int, float], margin: float) -> torch.Tensor:
    """mean_ℓ relu(m·d_ℓ⁰ − d_ℓ)/s_ℓ; zero once every layer is `margin` times as separated as the base."""
    if margin <= 0:
        raise ValueError(f"the separation margin must be > 0, got {margin}")
    terms = [torch.relu(margin * base_distances[layer] - distance) / base_scales[layer]
             for layer, distance in distances.items()]
    return torch.stack(terms).mean()


def last_prompt_states(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                       layers: Sequence[int], forward: nn.Module | None = None,
                       grad: bool = True) -> dict[int, torch.Tensor]:
    """h_ℓ at the last prompt position for each layer, [n, d]; through `forward` (e.g. a DDP wrapper) if given."""
    return _prompt_forward(model, tokenizer, prompts, layers, forward, grad)[0]


def _prompt_forward(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                    layers: Sequence[int], forward: nn.Module | None = None, grad: bool = True,
                    encoded: dict | None = None) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """(h_ℓ at the last prompt position per layer [n, d], the first reply token's logits [n, V])."""
    encoded = encoded if encoded is not None else encode_prompts(model, tokenizer, prompts)
    with torch.set_grad_enabled(grad), HiddenStateRecorder(model, layers, detach=not grad) as recorder:
        logits = (forward or model)(**encoded, use_cache=False, logits_to_keep=1).logits[:, -1]
    return {layer: states[-1][:, -1].float() for layer, states in recorder.states.items()}, logits


@dataclass(frozen=True)
class SeparationReference:
    """The base model's class distance d_ℓ⁰ and RMS state norm s_ℓ per layer."""

    layers: tuple[int, ...]
    distances: dict[int, float]
    scales: dict[int, float]

    def to_json(self) -> dict:
        return {"layers": list(self.layers), "distances": {str(k): v for k, v in self.distances.items()},
                "scales": {str(k): v for k, v in self.scales.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "SeparationReference":
        return cls(tuple(data["layers"]), {int(k): float(v) for k, v in data["distances"].items()},
                   {int(k): float(v) for k, v in data["scales"].items()})


@torch.no_grad()
def separation_reference(model: nn.Module, tokenizer: PreTrainedTokenizerBase, harmful: Sequence[str],
                         harmless: Sequence[str], layers: Sequence[int], batch_size: int = 64) -> SeparationReference:
    """d_ℓ⁰ and s_ℓ on the given prompts (call before training, or with the adapters off)."""
    layers = [resolve_layer(model, layer) for layer in layers]
    states = {name: _chunked_states(model, tokenizer, prompts, layers, batch_size)
              for name, prompts in (("harmful", harmful), ("harmless", harmless))}
    distances, scales = {}, {}
    for layer in layers:
        h, b = states["harmful"][layer], states["harmless"][layer]
        distances[layer] = float(class_distance(h, b))
        scales[layer] = float(torch.cat([h, b]).pow(2).sum(-1).mean().sqrt())
    return SeparationReference(tuple(layers), distances, scales)


def exchange_inputs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                    replies: Sequence[str]) -> dict[str, torch.Tensor]:
    """Right-padded chat exchanges (prompt + reply) for the KL anchors, with their attention mask."""
    texts = [chat_prompt(tokenizer, prompt) + reply for prompt, reply in zip(prompts, replies, strict=True)]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = padding_side
    device = next(model.parameters()).device
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}


class ES2Trainer:
    """One ES2 step at a time on a LoRA model. `trained` is what the loss runs through (the model or its DDP
    wrapper); the base for the KL anchor is the same model with the adapters off."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, reference: SeparationReference,
                 optimizer: torch.optim.Optimizer, *, margin: float = 2.5, beta: float = 1.0,
                 trained: nn.Module | None = None, max_grad_norm: float = 1.0, relative: bool = True,
                 decision_beta: float = 1.0, attack_beta: float = 0.0, attack_layer: int | None = None,
                 attack_budget: float = 0.5, seed: int = 0):
        self.model, self.tokenizer, self.reference = model, tokenizer, reference
        self.optimizer = optimizer
        self.margin, self.beta, self.max_grad_norm, self.relative = margin, beta, max_grad_norm, relative
        self.decision_beta = decision_beta
        if attack_beta < 0 or not attack_budget > 0:
            raise ValueError(f"attack_beta must be >= 0 and attack_budget > 0, got {attack_beta} and {attack_budget}")
        layers = list(reference.layers)
        self.attack_layer = layers[len(layers) // 2] if attack_layer is None else resolve_layer(model, attack_layer)
        if attack_beta and self.attack_layer not in layers:
            raise ValueError(f"the attack layer {self.attack_layer} must be one of the separated layers {layers}")
        self.attack_beta, self.attack_budget = attack_beta, attack_budget
        self.budgets = random.Random(seed)
        self.trained = trained if trained is not None else model

    def step(self, harmful: Sequence[str], harmless: Sequence[str], anchor_prompts: Sequence[str],
             anchor_replies: Sequence[str], harmful_replies: Sequence[str | None] | None = None
             ) -> dict[str, float]:
        """One optimiser step. `harmful_replies` (aligned with `harmful`, None where there is none): the
        starting model's refusals for the attack anchor to keep whole; without them it keeps the first token."""
        if harmful_replies is not None and len(harmful_replies) != len(harmful):
            raise ValueError(f"{len(harmful_replies)} harmful replies for {len(harmful)} harmful prompts")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # Two forward passes with different layouts, so two backward passes; under DDP the first accumulates
        # locally (no_sync) and the second all-reduces the sum, as in gradient accumulation.
        accumulate = self.trained.no_sync() if hasattr(self.trained, "no_sync") else nullcontext()
        with accumulate:
            prompts = list(harmful) + list(harmless)
            encoded = encode_prompts(self.model, self.tokenizer, prompts)
            states, first_logits = _prompt_forward(self.model, self.tokenizer, prompts, list(self.reference.layers),
                                                   forward=self.trained, encoded=encoded)
            with torch.no_grad(), base_weights(self.model):
                base_first = self.model(**encoded, use_cache=False, logits_to_keep=1).logits[:, -1]
            every_prompt = torch.ones(len(prompts), 1, device=first_logits.device)
            decision = forward_kl(first_logits[:, None], base_first[:, None], every_prompt)
            split = len(harmful)
            distances = {layer: class_distance(value[:split], value[split:]) for layer, value in states.items()}
            if self.relative:
                distances = {layer: distance / states[layer].pow(2).sum(-1).mean().sqrt()
                             for layer, distance in distances.items()}
                base = {layer: self.reference.distances[layer] / self.reference.scales[layer] for layer in distances}
                separation = separation_loss(distances, base, dict.fromkeys(distances, 1.0), self.margin)
            else:
                base = self.reference.distances
                separation = separation_loss(distances, base, self.reference.scales, self.margin)
            (separation + self.decision_beta * decision).backward()
            attacked = None
            if self.attack_beta:
                attacked = (self._attack_anchor(encoded, states, base_first, split) if harmful_replies is None
                            else self._reply_anchor(harmful, harmful_replies, states, split))
        inputs = exchange_inputs(self.model, self.tokenizer, anchor_prompts, anchor_replies)
        with torch.no_grad(), base_weights(self.model):
            base_logits = self.model(**inputs, use_cache=False).logits
        logits = self.trained(**inputs, use_cache=False).logits
        anchor = forward_kl(logits, base_logits, inputs["attention_mask"].float())
        (self.beta * anchor).backward()
        loss = separation.detach() + self.decision_beta * decision.detach() + self.beta * anchor.detach()
        if attacked is not None:
            loss = loss + self.attack_beta * attacked
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                   self.max_grad_norm)
        self.optimizer.step()
        metrics = {"loss": float(loss.detach()), "separation_loss": float(separation.detach()),
                   "kl_to_base": float(anchor.detach()), "first_token_kl": float(decision.detach()),
                   "grad_norm": float(grad_norm)}
        if attacked is not None:
            metrics["attacked_first_token_kl" if harmful_replies is None else "attacked_reply_kl"] = attacked
        for layer, distance in distances.items():
            metrics[f"separation/layer{layer}"] = float(distance.detach()) / base[layer]
        return metrics

    def _attack(self, states: dict[int, torch.Tensor], split: int) -> tuple[torch.Tensor, float] | None:
        """This step's attack: the unit harmful → safe direction at the attack layer and ε·r (None if degenerate)."""
        layer_states = states[self.attack_layer].detach()
        direction = layer_states[split:].mean(0) - layer_states[:split].mean(0)
        if not float(direction.norm()) > 0:
            return None
        scale = float(layer_states.pow(2).sum(-1).mean().sqrt())
        return direction / direction.norm(), self.budgets.uniform(0.0, self.attack_budget) * scale

    def _reply_anchor(self, harmful: Sequence[str], replies: Sequence[str | None], states: dict[int, torch.Tensor],
                      split: int) -> float:
        """Backpropagate α·L_att-reply (the module docstring) for the harmful prompts that have a refusal."""
        attack = self._attack(states, split)
        kept = [(prompt, reply) for prompt, reply in zip(harmful, replies, strict=True) if reply]
        if attack is None or not kept:
            return 0.0
        direction, size = attack
        inputs = exchange_inputs(self.model, self.tokenizer, [prompt for prompt, _ in kept],
                                      [reply for _, reply in kept])
        mask = reply_prediction_mask(self.tokenizer, [prompt for prompt, _ in kept], inputs["attention_mask"])
        with torch.no_grad(), base_weights(self.model):
            start_logits = self.model(**inputs, use_cache=False).logits
        with add_vector(self.model, self.attack_layer, direction, scale=size):
            logits = self.trained(**inputs, use_cache=False).logits
        attacked = forward_kl(logits, start_logits, mask)
        (self.attack_beta * attacked).backward()
        return float(attacked.detach())

    def _attack_anchor(self, encoded: dict, states: dict[int, torch.Tensor], base_first: torch.Tensor,
                       split: int) -> float:
        """Backpropagate α·L_att (the module docstring) for the harmful prompts [:split]; returns L_att."""
        attack = self._attack(states, split)
        if attack is None:
            return 0.0
        direction, size = attack
        harmful = {key: value[:split] for key, value in encoded.items()}
        with add_vector(self.model, self.attack_layer, direction, scale=size):
            logits = self.trained(**harmful, use_cache=False, logits_to_keep=1).logits[:, -1]
        every_prompt = torch.ones(split, 1, device=logits.device)
        attacked = forward_kl(logits[:, None], base_first[:split, None], every_prompt)
        (self.attack_beta * attacked).backward()
        return float(attacked.detach())


def reply_prediction_mask(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                          attention_mask: torch.Tensor) -> torch.Tensor:
    """[n, T] float mask of the positions whose next token is a reply token, for right-padded prompt + reply rows
    (as `exchange_inputs` builds them): from the last prompt token to the one before the reply's last."""
    mask = torch.zeros_like(attention_mask, dtype=torch.float)
    for row, prompt in enumerate(prompts):
        start = len(tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]) - 1
        end = int(attention_mask[row].sum()) - 1
        mask[row, start:end] = 1.0
    return mask


def _chunked_states(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                    layers: Sequence[int], batch_size: int) -> dict[int, torch.Tensor]:
    if not prompts:
        raise ValueError("the separation reference needs harmful and harmless prompts")
    chunks: dict[int, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        part = last_prompt_states(model, tokenizer, prompts[start:start + batch_size], layers, grad=False)
        for layer, value in part.items():
            chunks.setdefault(layer, []).append(value.cpu())
    return {layer: torch.cat(value) for layer, value in chunks.items()}
