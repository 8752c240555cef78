"""Hooks on the residual stream: read h_ℓ, add a vector to it, or pass it through a projection module.

Each hook sits on the output of decoder layer ℓ, so it changes what every later layer sees. Hooks are
handles: `remove()` (or leaving their `with` block) restores the model exactly, and several hooks on one
model compose in the order they were added.
"""

from collections.abc import Callable, Iterable
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


def _replace_hidden(output: Any, transform: HiddenTransform) -> Any:
    # Blocks return the hidden states alone or as the first item of a tuple, depending on the architecture.
    if isinstance(output, torch.Tensor):
        return transform(output)
    return (transform(output[0]), *output[1:])


def _hidden(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def transform_hidden(model: nn.Module, layer: int, transform: HiddenTransform) -> Hook:
    """Replace layer ℓ's output h by transform(h) (shape [batch, seq, d] in, same shape out)."""
    block = decoder_layers(model)[resolve_layer(model, layer)]
    handle = block.register_forward_hook(lambda _module, _inputs, output: _replace_hidden(output, transform))
    return Hook([handle])


def add_vector(model: nn.Module, layer: int, vector: torch.Tensor, scale: float = 1.0) -> Hook:
    """Activation addition: h ← h + scale·v at every position of layer ℓ's output."""
    if vector.dim() != 1:
        raise ValueError(f"the steering vector must be 1-D [d], got shape {tuple(vector.shape)}")

    def shift(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != vector.shape[0]:
            raise ValueError(f"vector has {vector.shape[0]} dims but layer {layer} states have {hidden.shape[-1]}")
        return hidden + scale * vector.to(device=hidden.device, dtype=hidden.dtype)

    return transform_hidden(model, layer, shift)


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
            hidden = _hidden(output)
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
