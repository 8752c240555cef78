"""LearnerWorker ×K: data-parallel PPO learners (DDP over torch.distributed: gloo on CPU, nccl on GPU).

Each rank trains on its shard of the batch; rank 0 publishes the new weights to the object store, writes
checkpoints and exports the final model.
"""

import json
import os
import socket
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import ray
import torch
import torch.distributed as dist

from cluster.placement import Placement, RoleResources
from safelatent import checkpoint
from safelatent.methods.behaviour_latents import BehaviourExample
from safelatent.methods.head_training import HeadSettings, refit_attached_head
from safelatent.methods.learner import OptimizerSettings, PPOLearner
from safelatent.methods.ppo import PPOSettings
from safelatent.methods.rollout import RolloutBatch, split_by_groups
from safelatent.models.policy import PolicySettings, export_policy, load_policy
from safelatent.models.safe_head import head_state, load_head_state


@ray.remote
class LearnerWorker:
    def __init__(self, rank: int, world_size: int, model_path: str, policy: PolicySettings, ppo: PPOSettings,
                 optimizer: OptimizerSettings, temperature: float, seed: int, threads: int, off_policy_cap: float):
        if threads:
            torch.set_num_threads(threads)
        self.rank, self.world_size = rank, world_size
        self.args = (model_path, policy, ppo, optimizer, temperature, seed, off_policy_cap)
        self.learner: PPOLearner | None = None

    def master_address(self) -> tuple[str, int]:
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int, backend: str, timeout_s: float) -> dict:
        model_path, policy, ppo, optimizer, temperature, seed, off_policy_cap = self.args
        if self.world_size > 1:
            dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=self.rank,
                                    world_size=self.world_size, timeout=timedelta(seconds=timeout_s))
        loaded = load_policy(model_path, policy, trainable=True)
        self.tokenizer = loaded.tokenizer
        self.learner = PPOLearner(loaded.model, ppo, optimizer, temperature=temperature, seed=seed,
                                  off_policy_cap=off_policy_cap)
        return {"pid": os.getpid(), "rank": self.rank, "device": str(self.learner.device)}

    def train(self, batch: RolloutBatch, rewards: torch.Tensor, ref_logprobs: torch.Tensor, beta: float, step: int,
              off_policy: bool) -> tuple[dict[str, float], float]:
        started = time.perf_counter()
        stats = self.learner.step(batch, rewards, ref_logprobs, beta, step, off_policy)
        return stats, time.perf_counter() - started

    def publish(self) -> list[ray.ObjectRef]:
        """The follower state (weights, and the head if any) in the object store (wrapped in a list so the caller
        gets the reference)."""
        return [ray.put(self.learner.follower_state())]

    def update_head(self, examples: list[BehaviourExample], settings: HeadSettings, steps: int, seed: int,
                    rollouts: RolloutBatch | None, harmful: list[bool]) -> tuple[dict[str, float], dict]:
        """Refit the policy's safe-projection head on its current states; the stats and the new head."""
        stats = refit_attached_head(self.learner.policy, self.tokenizer, examples, settings, steps, seed,
                                    rollouts, harmful)
        return stats, head_state(self.learner.policy)

    def load_head_state(self, state: dict) -> None:
        load_head_state(self.learner.policy, state)

    def head_state(self) -> dict | None:
        return head_state(self.learner.policy)

    def save_checkpoint(self, root: str, step: int, trainer_state: dict, keep: int | None) -> str:
        staging = Path(tempfile.mkdtemp(prefix="safelatent-ckpt-")) / f"step-{step:06d}"
        staging.mkdir()
        torch.save(self.learner.state_dict(), staging / checkpoint.LEARNER_FILE)
        (staging / checkpoint.STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        return checkpoint.publish(staging, root, step, keep)

    def load_checkpoint(self, location: str) -> None:
        local = checkpoint.fetch(location)
        state = torch.load(local / checkpoint.LEARNER_FILE, map_location=self.learner.device, weights_only=True)
        state["torch_rng"] = state["torch_rng"].cpu()
        self.learner.load_state_dict(state)

    def export(self, directory: str) -> str:
        return str(export_policy(self.learner.policy, self.tokenizer, directory))


class LearnerGroup:
    """K learner ranks joined in one process group; calls fan out to all ranks and stats are averaged."""

    def __init__(self, placement: Placement, count: int, resources: RoleResources, model_path: str,
                 policy: PolicySettings, ppo: PPOSettings, optimizer: OptimizerSettings, temperature: float,
                 seed: int, threads: int, off_policy_cap: float, timeout_s: float):
        self.workers = [LearnerWorker.options(**placement.options("learner", rank, resources)).remote(
            rank, count, model_path, policy, ppo, optimizer, temperature, seed, threads, off_policy_cap)
            for rank in range(count)]
        address, port = ray.get(self.workers[0].master_address.remote())
        # NCCL needs a whole GPU per rank; ranks on CPU (or sharing a GPU) use gloo.
        backend = "nccl" if resources.num_gpus >= 1 else "gloo"
        self.info = ray.get([worker.setup.remote(address, port, backend, timeout_s) for worker in self.workers])

    def train(self, batch: RolloutBatch, rewards: torch.Tensor, ref_logprobs: torch.Tensor, beta: float, step: int,
              off_policy: bool) -> tuple[dict[str, float], float]:
        """Mean diagnostics over the ranks, and the slowest rank's seconds."""
        shards = split_by_groups(batch, len(self.workers))
        size = len(shards[0])
        results = ray.get([worker.train.remote(shard, rewards[rank * size:(rank + 1) * size],
                                               ref_logprobs[rank * size:(rank + 1) * size], beta, step, off_policy)
                           for rank, (worker, shard) in enumerate(zip(self.workers, shards, strict=True))])
        names = results[0][0].keys()
        stats = {name: sum(result[0][name] for result in results) / len(results) for name in names}
        return stats, max(result[1] for result in results)

    def publish(self) -> ray.ObjectRef:
        return ray.get(self.workers[0].publish.remote())[0]

    def update_head(self, examples_ref: ray.ObjectRef, settings: HeadSettings, steps: int, seed: int,
                    rollouts: RolloutBatch | None, harmful: list[bool]) -> tuple[dict[str, float], dict]:
        """Rank 0 refits the head; the other ranks copy it, so every rank trains the same policy."""
        stats, state = ray.get(self.workers[0].update_head.remote(examples_ref, settings, steps, seed, rollouts,
                                                                   harmful))
        ray.get([worker.load_head_state.remote(state) for worker in self.workers[1:]])
        return stats, state

    def head_state(self) -> dict | None:
        return ray.get(self.workers[0].head_state.remote())

    def save_checkpoint(self, root: str, step: int, trainer_state: dict, keep: int | None) -> str:
        return ray.get(self.workers[0].save_checkpoint.remote(root, step, trainer_state, keep))

    def load_checkpoint(self, location: str) -> None:
        ray.get([worker.load_checkpoint.remote(location) for worker in self.workers])

    def export(self, directory: str) -> str:
        return ray.get(self.workers[0].export.remote(directory))
