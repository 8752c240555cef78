"""The policy being trained: a causal LM, optionally with LoRA adapters, and its trainable weights.

Rollout workers and learners build the same policy from the same settings, so the learner's trainable
weights (all of them for full fine-tuning, the adapters for LoRA) are all a rollout worker needs to follow.
"""

import copy
from pathlib import Path

import torch
from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safelatent.config import Config
from safelatent.models.loading import DeviceName, DTypeName, LoadedModel, load, save
from safelatent.models.lora import LoraSettings, apply_lora, merge_lora
from safelatent.models.safe_head import head_state, load_head_state


class PolicySettings(Config):
    """How to build the policy from a model."""

    dtype: DTypeName = Field("auto", description="auto: bfloat16 on GPU, float32 on CPU.")
    device: DeviceName = Field("auto", description="auto: cuda when available, else cpu.")
    lora: LoraSettings | None = Field(None, description="LoRA adapters to train; null for full fine-tuning.")


def load_policy(model_path: str, settings: PolicySettings, trainable: bool) -> LoadedModel:
    """The policy at `model_path`, with LoRA when configured; `trainable` puts it in training mode."""
    loaded = load(model_path, dtype=settings.dtype, device=settings.device)
    model = loaded.model
    if settings.lora is not None:
        model = apply_lora(model, settings.lora)
    if not trainable:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model.eval()
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, source=loaded.source)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters that training changes (what a rollout worker must receive)."""
    return {name: parameter.detach().to("cpu", copy=True) for name, parameter in model.named_parameters()
            if parameter.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Overwrite `model`'s parameters named in `state` (from `trainable_state` of the same policy)."""
    parameters = dict(model.named_parameters())
    unknown = sorted(set(state) - set(parameters))
    if unknown:
        raise KeyError(f"{len(unknown)} weights do not belong to this policy (first: {unknown[0]}); the learner "
                       "and the rollout workers must build the policy from the same model and LoRA settings")
    with torch.no_grad():
        for name, value in state.items():
            target = parameters[name]
            if target.shape != value.shape:
                raise ValueError(f"weight {name} has shape {tuple(value.shape)}, the policy expects "
                                 f"{tuple(target.shape)}")
            target.copy_(value.to(device=target.device, dtype=target.dtype))


def follower_state(model: torch.nn.Module) -> dict:
    """Everything a follower built from the same settings needs to act as `model`: its trainable weights and,
    when it carries a safe-projection head (which SLS may update between PPO steps), the head's tensors."""
    return {"weights": trainable_state(model), "head": head_state(model)}


def load_follower_state(model: torch.nn.Module, state: dict) -> None:
    """Make `model` act as the policy whose `follower_state` this is."""
    load_trainable_state(model, state["weights"])
    if state["head"] is not None:
        load_head_state(model, state["head"])


def export_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Save the policy as a plain Hugging Face model (LoRA adapters merged into a copy of the weights)."""
    plain = merge_lora(copy.deepcopy(model)) if hasattr(model, "merge_and_unload") else model
    return save((plain, tokenizer), directory)
