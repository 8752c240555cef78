"""Fit a safe-projection head adversarially against a latent probe (DESIGN 6.3).

With z a state, y = 1 for harmful behaviour, π the head and c_ψ a linear probe:

    min over (W, b)  max over ψ   −BCE(c_ψ(π(z)), y) + λ_move·E‖π(z) − z‖²/s² + λ_keep·E_B‖π(z) − z‖²/s²

The probe learns to tell harmful from safe states after the head; the head moves harmful states where the
probe cannot tell them apart, paying for every movement and, more, for moving safe states (B). s² is the
mean squared state norm, so the λs do not depend on the model's scale. Facets start at difference-of-means
normals (K = 1: w = mean_H − mean_B; K > 1: one per k-means cluster of the harmful states) with b at a
quantile of the safe states' projections. The layer is given or chosen by a probe's validation accuracy.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safelatent.config import Config
from safelatent.methods.behaviour_latents import (
    BehaviourExample,
    Latents,
    collect_latents,
    merge_latents,
    rollout_latents,
)
from safelatent.methods.rollout import RolloutBatch
from safelatent.methods.safe_projection import SafeProjection
from safelatent.models.safe_head import head_removed


class HeadSettings(Config):
    """How the safe-projection head is built and trained."""

    layer: int | Literal["auto"] = Field("auto", description="Decoder layer whose output the head projects; "
                                                             "'auto' picks the layer where a linear probe best "
                                                             "separates harmful from safe behaviour (validation).")
    facets: int = Field(4, ge=1, le=64, description="K, the number of half-spaces bounding the safe set.")
    rank: int = Field(0, ge=0, description="Rank of the optional learned correction; 0 for the pure projection.")
    dykstra_steps: int = Field(20, ge=1, description="Dykstra rounds of the projection when facets > 1.")
    init_quantile: float = Field(0.5, gt=0, lt=1, description="Each facet starts with b at this quantile of the "
                                                              "safe states' projections onto its normal.")
    lambda_move: float = Field(0.1, ge=0, description="Price of moving any state (relative squared distance).")
    lambda_keep: float = Field(2.0, ge=0, description="Extra price of moving a safe state.")
    adversarial_steps: int = Field(300, ge=0, description="Alternating probe/head updates; 0 keeps the "
                                                          "difference-of-means initialisation.")
    probe_steps: int = Field(5, ge=1, description="Probe updates per head update.")
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(2048, ge=16)
    examples_per_kind: int = Field(300, ge=1, description="Micro-world rows per kind for the training latents "
                                                          "(validation uses a quarter as many).")
    seed: int = Field(0, ge=0)


@dataclass
class FitReport:
    layer: int
    layer_accuracies: dict[int, float]  # linear-probe validation accuracy per layer, before any head
    probe_accuracy_before: float  # a fresh probe on validation states without the head
    probe_accuracy_after: float  # a fresh probe on validation states through the head
    harmful_moved: float  # share of harmful validation states the head moves
    safe_moved: float  # share of safe validation states it moves
    harmful_movement: float  # mean ‖π(z) − z‖ / rms‖z‖ over harmful validation states
    safe_movement: float
    train_states: int
    validation_states: int

    def to_json(self) -> dict:
        data = asdict(self)
        data["layer_accuracies"] = {str(layer): value for layer, value in self.layer_accuracies.items()}
        return data


def balanced_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE with both classes weighted equally, whatever their counts."""
    losses = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    positive = labels == 1
    return 0.5 * (losses[positive].mean() + losses[~positive].mean())


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    predicted = logits > 0
    positive = labels == 1
    return 0.5 * float((predicted[positive]).float().mean() + (~predicted[~positive]).float().mean())


def train_probe(states: torch.Tensor, labels: torch.Tensor, steps: int = 200, lr: float = 0.05,
                seed: int = 0) -> nn.Linear:
    """A linear probe fitted by full-batch Adam on standardised states (the standardisation is folded in)."""
    generator = torch.Generator().manual_seed(seed)
    mean, scale = states.mean(0), states.std(0).clamp_min(1e-6)
    probe = nn.Linear(states.shape[1], 1)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=generator)
        probe.bias.zero_()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    normalised = (states - mean) / scale
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            balanced_bce(probe(normalised).squeeze(-1), labels).backward()
            optimizer.step()
    folded = nn.Linear(states.shape[1], 1)
    with torch.no_grad():
        folded.weight.copy_(probe.weight / scale)
        folded.bias.copy_(probe.bias - (probe.weight / scale) @ mean)
    return folded


def probe_accuracy(train: tuple[torch.Tensor, torch.Tensor], validation: tuple[torch.Tensor, torch.Tensor],
                   seed: int = 0) -> float:
    """Balanced validation accuracy of a linear probe trained on `train` ((states, labels) pairs)."""
    probe = train_probe(*train, seed=seed)
    with torch.no_grad():
        return balanced_accuracy(probe(validation[0]).squeeze(-1), validation[1])


def pick_layer(train: Latents, validation: Latents, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The layer whose states a linear probe separates best on validation data (the earliest among ties)."""
    accuracies = {layer: probe_accuracy((train.states[layer], train.labels),
                                        (validation.states[layer], validation.labels), seed)
                  for layer in sorted(train.states)}
    best = max(accuracies.values())
    return min(layer for layer, value in accuracies.items() if value >= best - 1e-3), accuracies


def initial_facets(harmful: torch.Tensor, safe: torch.Tensor, facets: int, quantile: float,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Difference-of-means normals (one per k-means cluster of the harmful states) and quantile offsets."""
    centres = _kmeans(harmful, facets, seed) if facets > 1 else harmful.mean(0, keepdim=True)
    weight = centres - safe.mean(0)
    if not torch.all(weight.norm(dim=-1) > 0):
        raise ValueError("harmful and safe states have the same mean; no facet separates them")
    bias = torch.quantile(safe @ weight.T, quantile, dim=0)
    return weight, bias


def fit_head(train: Latents, validation: Latents, settings: HeadSettings,
             layer_accuracies: dict[int, float] | None = None, layer: int | None = None
             ) -> tuple[SafeProjection, FitReport]:
    """Fit the head at `layer` (settings.layer unless given) and report how it moves validation states."""
    layer = layer if layer is not None else settings.layer
    if not isinstance(layer, int) or layer not in train.states:
        raise ValueError(f"no latents for layer {layer}; collected layers {sorted(train.states)}")
    torch.manual_seed(settings.seed)
    states, labels = train.states[layer], train.labels
    harmful, safe = train.split(layer)
    head = SafeProjection(states.shape[1], settings.facets, settings.rank, settings.dykstra_steps)
    head.set_facets(*initial_facets(harmful, safe, settings.facets, settings.init_quantile, settings.seed))
    if settings.adversarial_steps:
        _adversarial(head, states, labels, settings, settings.adversarial_steps, settings.seed)
    head.requires_grad_(False)
    report = _report(head, layer, train, validation, layer_accuracies or {}, settings.seed)
    return head, report


def update_head(head: SafeProjection, states: torch.Tensor, labels: torch.Tensor, settings: HeadSettings,
                steps: int, seed: int) -> dict[str, float]:
    """Continue the adversarial game from the head's current facets for `steps` rounds on new latents (the
    states of a policy that training has changed); the head stays frozen afterwards. Returns the share of
    harmful and safe states the head moves, before and after."""
    if not ((labels == 1).any() and (labels == 0).any()):
        raise ValueError("updating the head needs both harmful and safe states")
    device = head.weight.device
    head.to("cpu").requires_grad_(True)
    try:
        before = _moved_shares(head, states, labels)
        with torch.enable_grad():
            _adversarial(head, states, labels, settings, steps, seed)
        after = _moved_shares(head, states, labels)
    finally:
        head.requires_grad_(False).to(device)
    return {"harmful_moved_before": before[0], "safe_moved_before": before[1], "harmful_moved": after[0],
            "safe_moved": after[1], "states": float(len(states)), "harmful_states": float((labels == 1).sum())}


def refit_attached_head(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        examples: Sequence[BehaviourExample], settings: HeadSettings, steps: int, seed: int,
                        rollouts: RolloutBatch | None = None, harmful: Sequence[bool] = ()) -> dict[str, float]:
    """Update the head `model` carries on its current states (alternating head updates during PPO): the
    behaviour examples teacher-forced through the model as it is now, plus, when given, its own sampled
    responses labelled by a judge (`harmful` per row). States are read before the head, where it acts."""
    was_training = model.training
    model.eval()
    try:
        with head_removed(model) as attached:
            latents = collect_latents(model, tokenizer, examples, [attached.layer])
            if rollouts is not None:
                latents = merge_latents(latents, rollout_latents(model, rollouts, attached.layer, harmful))
            return {"rollout_harmful_rows": float(sum(map(bool, harmful))),
                    **update_head(attached.head, latents.states[attached.layer], latents.labels, settings, steps,
                                  seed)}
    finally:
        model.train(was_training)


@torch.no_grad()
def _moved_shares(head: SafeProjection, states: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    moved = (head(states) - states).norm(dim=-1) > 0
    return float(moved[labels == 1].float().mean()), float(moved[labels == 0].float().mean())


def _adversarial(head: SafeProjection, states: torch.Tensor, labels: torch.Tensor, settings: HeadSettings,
                 steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scale = states.pow(2).sum(-1).mean()
    probe = nn.Linear(states.shape[1], 1)
    # Adam steps are a fixed size; give the facets' offsets and normals steps in the states' own units.
    step_scale = math.sqrt(float(scale) / states.shape[1])
    facets = [head.weight, head.bias]
    learned = [parameter for name, parameter in head.named_parameters() if name not in ("weight", "bias")]
    head_optimizer = torch.optim.Adam([{"params": facets, "lr": settings.lr * step_scale},
                                       {"params": learned, "lr": settings.lr}])
    probe_optimizer = torch.optim.Adam(probe.parameters(), lr=settings.lr)
    for _ in range(steps):
        index = torch.randint(len(states), (min(settings.batch_size, len(states)),), generator=generator)
        batch, batch_labels = states[index], labels[index]
        if batch_labels.min() == batch_labels.max():
            continue
        with torch.no_grad():
            projected = head(batch)
        for _ in range(settings.probe_steps):
            probe_optimizer.zero_grad()
            balanced_bce(probe(projected).squeeze(-1), batch_labels).backward()
            probe_optimizer.step()
        head_optimizer.zero_grad()
        projected = head(batch)
        movement = (projected - batch).pow(2).sum(-1) / scale
        safe = batch_labels == 0
        loss = (-balanced_bce(probe(projected).squeeze(-1), batch_labels) + settings.lambda_move * movement.mean()
                + settings.lambda_keep * movement[safe].mean())
        loss.backward()
        head_optimizer.step()


@torch.no_grad()
def _report(head: SafeProjection, layer: int, train: Latents, validation: Latents,
            layer_accuracies: dict[int, float], seed: int) -> FitReport:
    train_states, val_states = train.states[layer], validation.states[layer]
    train_after, val_after = head(train_states), head(val_states)
    rms = val_states.pow(2).sum(-1).mean().sqrt()
    moved = (val_after - val_states).norm(dim=-1)
    harmful = validation.labels == 1
    return FitReport(
        layer=layer, layer_accuracies=layer_accuracies,
        probe_accuracy_before=probe_accuracy((train_states, train.labels), (val_states, validation.labels), seed),
        probe_accuracy_after=probe_accuracy((train_after, train.labels), (val_after, validation.labels), seed),
        harmful_moved=float((moved[harmful] > 0).float().mean()),
        safe_moved=float((moved[~harmful] > 0).float().mean()),
        harmful_movement=float(moved[harmful].mean() / rms), safe_movement=float(moved[~harmful].mean() / rms),
        train_states=len(train_states), validation_states=len(val_states))


def _kmeans(points: torch.Tensor, clusters: int, seed: int, rounds: int = 25) -> torch.Tensor:
    if len(points) < clusters:
        raise ValueError(f"{clusters} facets need at least {clusters} harmful states, got {len(points)}")
    generator = torch.Generator().manual_seed(seed)
    centres = points[torch.randperm(len(points), generator=generator)[:clusters]].clone()
    for _ in range(rounds):
        nearest = torch.cdist(points, centres).argmin(dim=1)
        for cluster in range(clusters):
            members = points[nearest == cluster]
            if len(members):
                centres[cluster] = members.mean(0)
    return centres
