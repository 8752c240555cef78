"""A steering vector that travels with its model: added by a hook at one site, saved beside the weights.

Steering is activation addition, e' = e + α·v̂, on the output of one module of the model: a decoder layer ℓ
(the residual stream h_ℓ, through `hooks.add_vector`) or any named module whose output is a sequence of
states [batch, seq, d], for example one layer of a text encoder whose states condition another generator.
The output may be a tensor, a tuple whose first item is the states, or a Hugging Face ModelOutput.

A model directory with `steering.json` and `steering.safetensors` is a steered model: `models.load()`
attaches the vector at the recorded site with the recorded scale, so evaluation and serving run it steered,
and `models.save()` writes an attached vector back. The vector stays outside the model's module tree, so the
weights file is unchanged and any tool that ignores the two files loads the plain model. Removing the hook
restores the model's own forward pass exactly.
"""

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from safelatent.models.hooks import Hook, add_to_module, add_vector, output_states, unwrapped
from safelatent.models.layers import decoder_layers, hidden_size, resolve_layer

STEERING_CONFIG = "steering.json"
STEERING_WEIGHTS = "steering.safetensors"
FORMAT = "safelatent.steering"
VERSION = 1
_ATTRIBUTE = "_safelatent_steering"
_VECTOR = "vector"


@dataclass(frozen=True)
class SteeringSite:
    """Where steering applies: decoder layer `layer` (Python-style negatives allowed) or the module named `module`
    (a dotted path as in `model.named_modules()`, e.g. "encoder.layer.1")."""

    layer: int | None = None
    module: str | None = None

    def __post_init__(self) -> None:
        if (self.layer is None) == (self.module is None):
            raise ValueError(f"a steering site is a decoder layer or a named module, exactly one; got layer="
                             f"{self.layer!r}, module={self.module!r}")

    def resolve(self, model: nn.Module) -> "SteeringSite":
        """The same site with a negative layer index made absolute (checked against the model)."""
        if self.layer is not None:
            return SteeringSite(layer=resolve_layer(model, self.layer))
        self.target(model)
        return self

    def target(self, model: nn.Module) -> nn.Module:
        """The module whose output is steered."""
        if self.layer is not None:
            return decoder_layers(model)[resolve_layer(model, self.layer)]
        try:
            return model.get_submodule(self.module)
        except AttributeError:
            names = [name for name, _ in model.named_modules() if name][:12]
            raise ValueError(f"{type(model).__name__} has no module {self.module!r}; its modules include "
                             f"{', '.join(names)}") from None

    def to_json(self) -> dict:
        return {"layer": self.layer} if self.layer is not None else {"module": self.module}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SteeringSite":
        return cls(layer=data.get("layer"), module=data.get("module"))

    def __str__(self) -> str:
        return f"layer {self.layer}" if self.layer is not None else f"module {self.module}"


@dataclass
class AttachedSteering:
    site: SteeringSite
    vector: torch.Tensor  # v̂ [d]
    scale: float  # α
    hook: Hook
    metadata: dict = field(default_factory=dict)

    def __deepcopy__(self, memo: dict) -> "AttachedSteering":
        # A deep copy of the model keeps calling the same hook function, hence the same vector.
        return self


class SiteRecorder:
    """Records the output states of a site during forward passes: `recorder.states` is a list of [batch, seq, d]."""

    def __init__(self, model: nn.Module, site: SteeringSite):
        self.states: list[torch.Tensor] = []
        handle = site.target(model).register_forward_hook(
            lambda _module, _inputs, output: self.states.append(output_states(output).detach()))
        self._hook = Hook([handle])

    def __enter__(self) -> "SiteRecorder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hook.remove()


def attach(model: nn.Module, site: SteeringSite, vector: torch.Tensor, scale: float,
           metadata: Mapping[str, Any] | None = None) -> AttachedSteering:
    """Add scale·vector at `site` in every forward pass of `model`; replaces steering already attached."""
    _check_vector(vector)
    detach(model)
    site = site.resolve(model)
    if site.layer is not None and vector.shape[0] != hidden_size(model):
        raise ValueError(f"the steering vector has {vector.shape[0]} dims but the model's states have "
                         f"{hidden_size(model)}: the vector belongs to another model")
    parameter = next(model.parameters())
    vector = vector.detach().to(device=parameter.device, dtype=torch.float32)
    scale = float(scale)
    hook = (add_vector(model, site.layer, vector, scale) if site.layer is not None
            else add_to_module(site.target(model), vector, scale))
    attached = AttachedSteering(site=site, vector=vector, scale=scale, hook=hook, metadata=dict(metadata or {}))
    object.__setattr__(unwrapped(model), _ATTRIBUTE, attached)
    return attached


def attached_steering(model: nn.Module) -> AttachedSteering | None:
    return unwrapped(model).__dict__.get(_ATTRIBUTE)


def detach(model: nn.Module) -> None:
    """Remove the steering, restoring the model's own forward pass exactly."""
    attached = unwrapped(model).__dict__.pop(_ATTRIBUTE, None)
    if attached is not None:
        attached.hook.remove()


def has_steering(directory: str | Path) -> bool:
    return (Path(directory) / STEERING_CONFIG).is_file()


def write_steering(directory: str | Path, site: SteeringSite, vector: torch.Tensor, scale: float,
                   metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the two steering files into `directory` (next to a model's weights)."""
    _check_vector(vector)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({_VECTOR: vector.detach().to("cpu", torch.float32).contiguous()}, directory / STEERING_WEIGHTS)
    spec = {"format": FORMAT, "version": VERSION, **site.to_json(), "scale": float(scale),
            "hidden_size": int(vector.shape[0]), "vector_norm": float(vector.norm()), "metadata": dict(metadata or {})}
    (directory / STEERING_CONFIG).write_text(json.dumps(spec, indent=2) + "\n")
    return directory


def save_steering(model: nn.Module, directory: str | Path) -> bool:
    """Write the attached steering (if any) into `directory`; True when it was written."""
    attached = attached_steering(model)
    if attached is None:
        return False
    write_steering(directory, attached.site, attached.vector, attached.scale, attached.metadata)
    return True


def read_steering(directory: str | Path) -> tuple[SteeringSite, torch.Tensor, float, dict]:
    """(site, vector, scale, metadata) of the steering saved in `directory`."""
    directory = Path(directory)
    try:
        spec = json.loads((directory / STEERING_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{directory / STEERING_CONFIG} is not a readable steering config: {error}") from error
    if spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise ValueError(f"{directory / STEERING_CONFIG}: expected format {FORMAT} version {VERSION}, found "
                         f"{spec.get('format')} version {spec.get('version')}")
    try:
        vector = load_file(directory / STEERING_WEIGHTS)[_VECTOR]
    except (OSError, KeyError) as error:
        raise ValueError(f"{directory / STEERING_WEIGHTS} is missing or holds no {_VECTOR!r} tensor: {error}"
                         ) from error
    if vector.shape != (spec["hidden_size"],):
        raise ValueError(f"{directory / STEERING_WEIGHTS}: the vector has shape {tuple(vector.shape)} but "
                         f"{STEERING_CONFIG} says {spec['hidden_size']} dims")
    return SteeringSite.from_json(spec), vector, float(spec["scale"]), spec.get("metadata", {})


def load_steering(directory: str | Path, model: nn.Module) -> AttachedSteering:
    """Attach the steering saved in `directory` to `model`."""
    site, vector, scale, metadata = read_steering(directory)
    try:
        return attach(model, site, vector, scale, metadata)
    except (ValueError, IndexError) as error:
        raise ValueError(f"the steering in {directory} does not fit this model: {error}") from None


def steered_copy(model_dir: str | Path, out_dir: str | Path, site: SteeringSite, vector: torch.Tensor, scale: float,
                 metadata: Mapping[str, Any] | None = None, link: bool = False) -> Path:
    """A copy of the saved model in `model_dir` (a local Hugging Face directory) that loads with this steering.

    With `link`, the model's files are symbolic links to the originals (a cheap copy for a sweep over scales).
    Steering files already in `model_dir` are not carried over.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise ValueError(f"{model_dir} is not a local model directory; load() it and save() a local copy first")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.name in (STEERING_CONFIG, STEERING_WEIGHTS) or not path.is_file():
            continue
        destination = out_dir / path.name
        if destination.exists() or destination.is_symlink():
            destination.unlink()
        if link:
            destination.symlink_to(path.resolve())
        else:
            shutil.copy2(path, destination)
    return write_steering(out_dir, site, vector, scale, metadata)


def _check_vector(vector: torch.Tensor) -> None:
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise ValueError(f"the steering vector must be a 1-D tensor [d], got {shape}")
    if not torch.isfinite(vector).all():
        raise ValueError("the steering vector contains NaN or infinite values")
