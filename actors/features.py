"""FeatureWorker: one model's mean-pooled states for a direction transfer (anchor states, or the safety direction).

Each side of a transfer is its own worker, so the source and target models are read in parallel. The role
decides what a worker may read: every role reads benign anchors, but a `target` worker refuses safe/unsafe
pairs, so the target side of a transfer never sees unsafe data. The native direction of the target, a baseline
for reports only, comes from a separate worker of role `native-baseline`.
"""

import os
from typing import Literal

import ray
import torch

from safelatent.methods.direction_transfer import (
    BenignAnchors,
    HarmfulDataError,
    SafetyPairs,
    anchor_states,
    safety_direction,
)
from safelatent.models.loading import DeviceName, DTypeName, load
from safelatent.models.steering import SteeringSite

FeatureRole = Literal["source", "target", "native-baseline"]
ROLES: tuple[str, ...] = ("source", "target", "native-baseline")


class FeatureExtractor:
    """A model held for reading states at one site; `FeatureWorker` is this class as a Ray actor."""

    def __init__(self, model_path: str, site: SteeringSite, role: FeatureRole, dtype: DTypeName = "float32",
                 device: DeviceName = "auto", threads: int = 1, batch_size: int = 64):
        if role not in ROLES:
            raise ValueError(f"unknown feature role {role!r}; one of {', '.join(ROLES)}")
        if threads:
            torch.set_num_threads(threads)
        self.role, self.site, self.batch_size = role, site, batch_size
        loaded = load(model_path, dtype=dtype, device=device)
        self.model, self.tokenizer = loaded.model.requires_grad_(False), loaded.tokenizer
        site.resolve(self.model)  # a site the model lacks fails here, before any state is read

    def ready(self) -> dict:
        return {"pid": os.getpid(), "role": self.role, "site": str(self.site)}

    def anchor_states(self, anchors: BenignAnchors) -> torch.Tensor:
        """The model's states of the benign anchors [n, d]."""
        return anchor_states(self.model, self.tokenizer, anchors, self.site, self.batch_size)

    def safety_direction(self, pairs: SafetyPairs) -> torch.Tensor:
        """mean_i [s(safe_i) − s(unsafe_i)] [d]; refused on the target side of a transfer."""
        if self.role == "target":
            raise HarmfulDataError("the target worker of a direction transfer never reads safe/unsafe pairs (they "
                                   "hold unsafe prompts); a native baseline needs a worker of role 'native-baseline'")
        return safety_direction(self.model, self.tokenizer, pairs, self.site, self.batch_size)


FeatureWorker = ray.remote(FeatureExtractor)
