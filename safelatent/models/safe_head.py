"""A safe-projection head that travels with its model: attached by a hook, saved beside the weights.

A model directory with `safe_projection.json` and `safe_projection.safetensors` is an SLS model: `load()`
attaches the head at the recorded layer, so rollout, learning, evaluation and serving all run the model
with its head, and `save()` writes the head back. The head stays outside the model's module tree, so the
Hugging Face weights file is unchanged, LoRA and optimizers never see the head, and any tool that ignores
the two files still loads the plain model.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from safelatent.models.hooks import Hook, project, unwrapped
from safelatent.models.layers import hidden_size, resolve_layer

HEAD_CONFIG = "safe_projection.json"
HEAD_WEIGHTS = "safe_projection.safetensors"
FORMAT = "safelatent.safe_projection"
VERSION = 1
_ATTRIBUTE = "_safelatent_safe_head"


@dataclass
class AttachedHead:
    layer: int
    head: nn.Module
    hook: Hook

    def __deepcopy__(self, memo: dict) -> "AttachedHead":
        # A deep copy of the model keeps calling the same hook function, hence the same head.
        return self


def attach(model: nn.Module, layer: int, head: nn.Module) -> AttachedHead:
    """Run `head` on layer ℓ's output in every forward pass of `model`; replaces a head already attached."""
    detach(model)
    parameter = next(model.parameters())
    head.to(parameter.device)
    attached = AttachedHead(layer=resolve_layer(model, layer), head=head, hook=project(model, layer, head))
    object.__setattr__(unwrapped(model), _ATTRIBUTE, attached)
    return attached


def attached_head(model: nn.Module) -> AttachedHead | None:
    return unwrapped(model).__dict__.get(_ATTRIBUTE)


def detach(model: nn.Module) -> None:
    """Remove the head, restoring the model's own forward pass exactly."""
    holder = unwrapped(model)
    attached = holder.__dict__.pop(_ATTRIBUTE, None)
    if attached is not None:
        attached.hook.remove()


def head_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """CPU copies of the attached head's tensors (None without a head): what a follower needs to match it."""
    attached = attached_head(model)
    if attached is None:
        return None
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in attached.head.state_dict().items()}


def load_head_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the attached head's tensors with `state` (from `head_state` of a model with the same head)."""
    attached = attached_head(model)
    if attached is None:
        raise ValueError("the model carries no safe-projection head to load head weights into; load the model "
                         "with its head (an SLS model directory)")
    own = attached.head.state_dict()
    if set(own) != set(state) or any(own[name].shape != state[name].shape for name in own):
        shapes = {name: tuple(value.shape) for name, value in state.items()}
        raise ValueError(f"the head weights {shapes} do not fit the attached head "
                         f"{ {name: tuple(value.shape) for name, value in own.items()} }")
    with torch.no_grad():
        for name, value in own.items():
            value.copy_(state[name].to(device=value.device, dtype=value.dtype))


@contextmanager
def head_removed(model: nn.Module) -> Iterator[AttachedHead]:
    """Run `model` without its head inside the block (to read the states the head sees); reattached after."""
    attached = attached_head(model)
    if attached is None:
        raise ValueError("the model carries no safe-projection head")
    detach(model)
    try:
        yield attached
    finally:
        attach(model, attached.layer, attached.head)


def has_head(directory: str | Path) -> bool:
    return (Path(directory) / HEAD_CONFIG).is_file()


def save_head(model: nn.Module, directory: str | Path) -> bool:
    """Write the attached head (if any) into `directory`; True when one was written."""
    attached = attached_head(model)
    if attached is None:
        return False
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    head = attached.head
    state = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in head.state_dict().items()}
    save_file(state, directory / HEAD_WEIGHTS)
    (directory / HEAD_CONFIG).write_text(json.dumps(
        {"format": FORMAT, "version": VERSION, "layer": attached.layer, **head.settings()}, indent=2) + "\n")
    return True


def load_head(directory: str | Path, model: nn.Module) -> AttachedHead:
    """Build the head saved in `directory` and attach it to `model` (frozen: training the policy leaves it)."""
    from safelatent.methods.safe_projection import SafeProjection

    directory = Path(directory)
    try:
        spec = json.loads((directory / HEAD_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{directory / HEAD_CONFIG} is not a readable safe-projection config: {error}") from error
    if spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise ValueError(f"{directory / HEAD_CONFIG}: expected format {FORMAT} version {VERSION}, found "
                         f"{spec.get('format')} version {spec.get('version')}")
    hidden = hidden_size(model)
    if spec["hidden_size"] != hidden:
        raise ValueError(f"the safe-projection head in {directory} works on {spec['hidden_size']}-dim states but "
                         f"the model's are {hidden}-dim: the head belongs to another model")
    head = SafeProjection(spec["hidden_size"], spec["facets"], spec["rank"], spec["steps"])
    head.load_state_dict(load_file(directory / HEAD_WEIGHTS))
    head.requires_grad_(False)
    return attach(model, spec["layer"], head)
