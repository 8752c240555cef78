"""ReferenceWorker: the frozen start model, giving the reference log-probabilities for the KL penalty."""

import os
import time

import ray
import torch

from actors.retry import with_retries
from cluster.placement import Placement, RoleResources
from safelatent.methods.rollout import RolloutBatch, score_tokens
from safelatent.models.loading import DeviceName, DTypeName, load
from safelatent.models.safe_head import load_head_state


@ray.remote
class ReferenceWorker:
    def __init__(self, model_path: str, dtype: DTypeName, device: DeviceName, threads: int):
        if threads:
            torch.set_num_threads(threads)
        self.model = load(model_path, dtype=dtype, device=device).model
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def ready(self) -> dict:
        return {"pid": os.getpid()}

    def load_head_state(self, state: dict) -> None:
        load_head_state(self.model, state)

    def logprobs(self, batch: RolloutBatch, temperature: float) -> tuple[torch.Tensor, float]:
        started = time.perf_counter()
        return score_tokens(self.model, batch, temperature), time.perf_counter() - started


class ReferenceRole:
    """The reference worker behind the same submit/collect calls as the other roles, restarted when it dies."""

    def __init__(self, placement: Placement, resources: RoleResources, model_path: str, dtype: DTypeName,
                 device: DeviceName, threads: int, max_restarts: int):
        self.worker = ReferenceWorker.options(**placement.options("reference", 0, resources),
                                              max_restarts=max_restarts, max_task_retries=0
                                              ).remote(model_path, dtype, device, threads)
        self.attempts = max_restarts + 1
        self.head_ref: ray.ObjectRef | None = None

    def set_head(self, state: dict) -> None:
        """Give the reference the policy's updated safe-projection head, so the KL penalty measures what PPO
        changed in the weights, not what the head update changed; a restarted worker gets it again."""
        self.head_ref = ray.put(state)
        with_retries(lambda: ray.get(self.worker.load_head_state.remote(self.head_ref)), "reference worker",
                     self.attempts)

    def _restore(self) -> None:
        if self.head_ref is not None:
            ray.get(self.worker.load_head_state.remote(self.head_ref))

    def ready(self) -> dict:
        return ray.get(self.worker.ready.remote())

    def submit(self, batch_ref: ray.ObjectRef, temperature: float) -> tuple:
        return batch_ref, temperature, self.worker.logprobs.remote(batch_ref, temperature)

    def collect(self, pending: tuple) -> tuple[torch.Tensor, float]:
        batch_ref, temperature, submitted = pending
        first = [submitted]

        def call() -> tuple[torch.Tensor, float]:
            return ray.get(first.pop() if first else self.worker.logprobs.remote(batch_ref, temperature))

        return with_retries(call, "reference worker", self.attempts, on_failure=self._restore)
