"""Hooks on the residual stream: read h_ℓ, add a vector to it, or pass it through a projection module.

Each hook sits on the output of decoder layer ℓ, so it changes what every later layer sees. Hooks are
handles: `remove()` (or leaving their `with` block) restores the model exactly, and several hooks on one
model compose in the order they were added.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from safelatent.models.layers import decoder_layers, resolve_layer

HiddenTransform = Callable[[torch.Tensor], torch.Tensor]


class Hook:
    """A removable hook; usable as a context manager."""

    def __init__(self, handles: list[Any]):
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "Hook":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def map_states(output: Any, transform: HiddenTransform) -> Any:
    """Apply `transform` to the states in a module's output: a tensor, a tuple's first item (decoder blocks) or a
    transformers ModelOutput's first field (encoders)."""
    if isinstance(output, torch.Tensor):
        return transform(output)
    if isinstance(output, tuple) and not hasattr(output, "keys"):
        return (transform(output[0]), *output[1:])
    if isinstance(output, Mapping):
        first = next(iter(output.keys()))
        updated = output.__class__(**output)
        updated[first] = transform(output[first])
        return updated
    raise TypeError(f"cannot change the states of a module whose output is a {type(output).__name__}; hooks need "
                    "states [batch, seq, d] (a tensor, a tuple starting with one, or a ModelOutput)")


def output_states(output: Any) -> torch.Tensor:
    """The states [batch, seq, d] in a module's output (see `map_states`)."""
    found: list[torch.Tensor] = []
    map_states(output, lambda states: found.append(states) or states)
    return found[0]


def transform_output(module: nn.Module, transform: HiddenTransform) -> Hook:
    """Replace any module's output states h by transform(h) (a decoder layer, an encoder, ...)."""
    handle = module.register_forward_hook(lambda _module, _inputs, output: map_states(output, transform))
    return Hook([handle])


def transform_hidden(model: nn.Module, layer: int, transform: HiddenTransform) -> Hook:
    """Replace layer ℓ's output h by transform(h) (shape [batch, seq, d] in, same shape out)."""
    return transform_output(decoder_layers(model)[resolve_layer(model, layer)], transform)


def add_to_module(module: nn.Module, vector: torch.Tensor, scale: float = 1.0) -> Hook:
    """Activation addition on any module whose output is states [batch, seq, d]: h ← h + scale·v everywhere."""
    if vector.dim() != 1:
        raise ValueError(f"the steering vector must be 1-D [d], got shape {tuple(vector.shape)}")

    def shift(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != vector.shape[0]:
            raise ValueError(f"the vector has {vector.shape[0]} dims but {type(module).__name__}'s output states "
                             f"have {hidden.shape[-1]}")
        return hidden + scale * vector.to(device=hidden.device, dtype=hidden.dtype)

    return transform_output(module, shift)


def add_vector(model: nn.Module, layer: int, vector: torch.Tensor, scale: float = 1.0) -> Hook:
    """Activation addition: h ← h + scale·v at every position of layer ℓ's output."""
    return add_to_module(decoder_layers(model)[resolve_layer(model, layer)], vector, scale)


def ablate_direction(model: nn.Module, direction: torch.Tensor, layers: Iterable[int] | None = None,
                     embeddings: bool = True) -> Hook:
    """Directional ablation: h ← h − (h·r̂)·r̂ on the residual stream, so no layer reads or keeps a component along r.

    Applied to the token embeddings' output (unless `embeddings` is False) and to every decoder layer's output
    (or those in `layers`), at every position.
    """
    if direction.dim() != 1 or not torch.isfinite(direction).all() or float(direction.norm()) == 0.0:
        raise ValueError(f"ablation needs a finite, non-zero 1-D direction [d], got shape {tuple(direction.shape)}")
    unit = direction.detach().float() / direction.detach().float().norm()

    def remove_component(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != unit.shape[0]:
            raise ValueError(f"the direction has {unit.shape[0]} dims but the states have {hidden.shape[-1]}")
        r = unit.to(device=hidden.device, dtype=hidden.dtype)
        return hidden - (hidden @ r).unsqueeze(-1) * r

    blocks = decoder_layers(model)
    indices = range(len(blocks)) if layers is None else [resolve_layer(model, layer) for layer in layers]
    modules = [blocks[index] for index in indices]
    if embeddings:
        modules.insert(0, model.get_input_embeddings())
    hooks = [transform_output(module, remove_component) for module in modules]
    return Hook([handle for hook in hooks for handle in hook._handles])


def unwrapped(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (the model itself otherwise): what carries attachments."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def project(model: nn.Module, layer: int, module: nn.Module) -> Hook:
    """Pass layer ℓ's output through `module` (for example a safe-projection head): h ← module(h)."""
    return transform_hidden(model, layer, module)


class HiddenStateRecorder:
    """Records h_ℓ at chosen layers during forward passes: `recorder.states[ℓ]` is a list of [batch, seq, d]."""

    def __init__(self, model: nn.Module, layers: Iterable[int], detach: bool = True):
        blocks = decoder_layers(model)
        self.layers = [resolve_layer(model, layer) for layer in layers]
        self.states: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self._detach = detach
        handles = [blocks[layer].register_forward_hook(self._recorder(layer)) for layer in self.layers]
        self._hook = Hook(handles)

    def _recorder(self, layer: int) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output_states(output)
            self.states[layer].append(hidden.detach() if self._detach else hidden)

        return record

    def remove(self) -> None:
        self._hook.remove()

    def __enter__(self) -> "HiddenStateRecorder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


@torch.no_grad()
def hidden_states_at(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     layers: Iterable[int]) -> dict[int, torch.Tensor]:
    """One forward pass; h_ℓ for each requested layer, shape [batch, seq, d]."""
    with HiddenStateRecorder(model, layers) as recorder:
        model(input_ids=input_ids, attention_mask=attention_mask)
    return {layer: states[-1] for layer, states in recorder.states.items()}
