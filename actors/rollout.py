"""RolloutWorker: the policy (with whatever hooks it carries) sampling responses with their log-probs."""

import os
import time

import ray
import torch

from actors.retry import ACTOR_FAILURES, with_retries
from cluster.placement import Placement, RoleResources
from safelatent.errors import SafelatentError
from safelatent.methods.rollout import RolloutBatch, concat_batches, sample
from safelatent.models.policy import PolicySettings, load_follower_state, load_policy


class StaleWeightsError(SafelatentError):
    """A rollout worker was asked to sample with weights it does not hold (it was restarted, say)."""


@ray.remote
class RolloutWorker:
    def __init__(self, model_path: str, policy: PolicySettings, threads: int):
        if threads:
            torch.set_num_threads(threads)
        self.loaded = load_policy(model_path, policy, trainable=False)
        self.weights_version = 0

    def ready(self) -> dict:
        return {"pid": os.getpid(), "device": str(next(self.loaded.model.parameters()).device),
                "pad_token_id": self.loaded.tokenizer.pad_token_id}

    def load_weights(self, state: dict, version: int) -> int:
        load_follower_state(self.loaded.model, state)
        self.weights_version = version
        return version

    def generate(self, prompts: list[str], sampling: dict, seed: int, first_group_id: int,
                 weights_version: int) -> tuple[RolloutBatch, float]:
        if self.weights_version != weights_version:
            raise StaleWeightsError(f"holds weights version {self.weights_version}, asked for {weights_version}")
        started = time.perf_counter()
        batch = sample(self.loaded.model, self.loaded.tokenizer, prompts, seed=seed, first_group_id=first_group_id,
                       **sampling)
        return batch, time.perf_counter() - started


class RolloutGroup:
    """N rollout workers: a step's prompts are split over them; a worker that died is restarted, given the
    current weights again, and its share is sampled again."""

    def __init__(self, placement: Placement, count: int, resources: RoleResources, model_path: str,
                 policy: PolicySettings, threads: int, max_restarts: int):
        self.workers = [RolloutWorker.options(**placement.options("rollout", i, resources), max_restarts=max_restarts,
                                              max_task_retries=0).remote(model_path, policy, threads)
                        for i in range(count)]
        self.attempts = max_restarts + 1
        self.pad_token_id = 0
        self.weights_ref: ray.ObjectRef | None = None
        self.weights_version = 0

    def ready(self) -> list[dict]:
        info = ray.get([worker.ready.remote() for worker in self.workers])
        self.pad_token_id = info[0]["pad_token_id"]
        return info

    def set_weights(self, weights_ref: ray.ObjectRef, version: int) -> None:
        """Every worker loads the object-store weights (one put by the learner, one read per worker)."""
        self.weights_ref, self.weights_version = weights_ref, version
        loads = [worker.load_weights.remote(weights_ref, version) for worker in self.workers]
        for index, load in enumerate(loads):
            first = [load]

            def call(index: int = index, first: list = first) -> int:
                return ray.get(first.pop() if first else self.workers[index].load_weights.remote(
                    self.weights_ref, self.weights_version))

            with_retries(call, f"loading weights into rollout worker {index}", self.attempts)

    def submit(self, prompts: list[str], sampling: dict, seeds: list[int], first_group_id: int) -> list:
        """Start sampling (returns pending shards for `collect`); prompts are split evenly over the workers."""
        pending = []
        group = first_group_id
        for index, shard in enumerate(_split(prompts, len(self.workers))):
            if shard:
                args = (shard, sampling, seeds[index], group)
                pending.append((index, args, self.workers[index].generate.remote(*args, self.weights_version)))
            group += len(shard)
        return pending

    def collect(self, pending: list) -> tuple[RolloutBatch, float]:
        """The whole batch, and the longest time a worker spent sampling."""
        batches, seconds = zip(*(self._result(*item) for item in pending), strict=True)
        return concat_batches(batches, self.pad_token_id), max(seconds)

    def _result(self, index: int, args: tuple, submitted: ray.ObjectRef) -> tuple[RolloutBatch, float]:
        first = [submitted]

        def call() -> tuple[RolloutBatch, float]:
            ref = first.pop() if first else self.workers[index].generate.remote(*args, self.weights_version)
            return ray.get(ref)

        return with_retries(call, f"rollout worker {index}", self.attempts,
                            on_failure=lambda: self._sync(index), retry_on=(*ACTOR_FAILURES, StaleWeightsError))

    def _sync(self, index: int) -> None:
        if self.weights_ref is not None:
            ray.get(self.workers[index].load_weights.remote(self.weights_ref, self.weights_version))


def _split(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    shards, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        shards.append(items[start:end])
        start = end
    return shards
