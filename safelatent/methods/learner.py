"""One PPO learner: the policy (with a value head for `gae`), its optimizer, and a step on a batch of rollouts.

Nothing here knows Ray. Under torch.distributed each rank holds one `PPOLearner` on its own shard of the
batch; the model is wrapped in DistributedDataParallel so gradients are averaged, and the advantage
statistics are global (see `methods.distributed`). Rank 0's `follower_state` is what rollout workers load.
"""

import hashlib

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel

from safelatent.config import Config
from safelatent.methods.distributed import world_size
from safelatent.methods.ppo import (
    PPOSettings,
    compute_advantages,
    off_policy_weights,
    policy_outputs,
    ppo_update,
    value_estimates,
)
from safelatent.methods.rollout import RolloutBatch
from safelatent.models.policy import follower_state
from safelatent.models.safe_head import head_state, load_head_state
from safelatent.models.value_head import ValueHeadModel


class OptimizerSettings(Config):
    """AdamW on the trainable parameters."""

    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.95))
    eps: float = Field(1e-8, gt=0)


def step_seed(seed: int, step: int, stream: str) -> int:
    """A seed for one (step, purpose): the same on a resumed run as on an uninterrupted one."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()[:4], "little")


class PPOLearner:
    """Owns the trainable policy; `step` runs one PPO iteration on a batch and returns its diagnostics."""

    def __init__(self, policy: PreTrainedModel, settings: PPOSettings, optimizer: OptimizerSettings, *,
                 temperature: float = 1.0, seed: int = 0, off_policy_cap: float = 2.0):
        self.policy = policy
        self.settings = settings
        self.temperature = temperature
        self.seed = seed
        self.off_policy_cap = off_policy_cap
        self.module: nn.Module = ValueHeadModel(policy) if settings.uses_critic else policy
        self.device = next(policy.parameters()).device
        self.trained: nn.Module = self.module
        if world_size() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW([p for p in self.module.parameters() if p.requires_grad],
                                           lr=optimizer.learning_rate, weight_decay=optimizer.weight_decay,
                                           betas=optimizer.betas, eps=optimizer.eps)

    def step(self, batch: RolloutBatch, rewards: torch.Tensor, ref_logprobs: torch.Tensor, beta: float, step: int,
             off_policy: bool = False) -> dict[str, float]:
        """One PPO iteration. `off_policy`: the batch was sampled by older weights; correct by importance weights."""
        batch = batch.to(self.device)
        rewards = rewards.to(self.device)
        ref_logprobs = ref_logprobs.to(self.device)
        mask = batch.response_mask.to(batch.logprobs.dtype)
        values = None
        clipped_batch = batch
        weights = None
        if self.settings.uses_critic or off_policy:
            self.module.eval()
            with torch.no_grad():
                if off_policy:
                    current, _, values = policy_outputs(self.module, batch, self.temperature)
                else:  # on-policy: the batch's log-probs are current, only the critic's values are needed
                    values = value_estimates(self.module, batch)
            if off_policy:
                weights = off_policy_weights(current, batch.logprobs, mask, self.off_policy_cap)
                clipped_batch = batch.with_logprobs(current * mask)
        advantages = compute_advantages(batch, rewards, ref_logprobs, values, self.settings, beta)
        generator = torch.Generator().manual_seed(step_seed(self.seed, step, "minibatches"))
        stats = ppo_update(self.trained, self.optimizer, clipped_batch, advantages, values, self.settings,
                           self.temperature, generator, weights)
        if weights is not None:
            stats["importance_weight"] = float((weights * mask).sum() / mask.sum().clamp(min=1))
        return {**advantages.stats, **stats}

    def follower_state(self) -> dict:
        """The trainable weights and the head (when the policy carries one): what a rollout worker loads."""
        return follower_state(self.policy)

    def state_dict(self) -> dict:
        """Everything a checkpoint needs to continue exactly: weights, value head, safe-projection head (SLS may
        update it between steps), optimizer, RNG."""
        return {"module": {name: tensor.detach().cpu() for name, tensor in self.module.state_dict().items()},
                "safe_head": head_state(self.policy),
                "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint with this learner's optimizer settings: the moments come from the
        checkpoint, the hyperparameters (a learning rate changed on resume, or by a PBT perturbation) from here."""
        settings = [{key: group[key] for key in ("lr", "weight_decay", "betas", "eps")}
                    for group in self.optimizer.param_groups]
        self.module.load_state_dict(state["module"])
        if state.get("safe_head") is not None:
            load_head_state(self.policy, state["safe_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group, own in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(own)
        torch.set_rng_state(state["torch_rng"])
