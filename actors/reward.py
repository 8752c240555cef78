"""RewardScorer: the AI judges (reward model + harm classifier) scoring batches of (prompt, response)."""

import hashlib
import os
import time

import ray
import torch

from actors.retry import with_retries
from cluster.placement import Placement, RoleResources
from safelatent.judges.feedback import AIFeedback, FeedbackScores, FeedbackSettings
from safelatent.models.loading import DeviceName


@ray.remote
class RewardScorer:
    def __init__(self, judges_dir: str, settings: FeedbackSettings, device: DeviceName, threads: int):
        if threads:
            torch.set_num_threads(threads)
        self.feedback = AIFeedback.load(judges_dir, settings, device)

    def ready(self) -> dict:
        return {"pid": os.getpid()}

    def provenance(self) -> dict:
        return {**self.feedback.provenance, "version": self.feedback.version}

    def score(self, prompts: list[str], responses: list[str]) -> tuple[FeedbackScores, float]:
        started = time.perf_counter()
        return self.feedback.score(prompts, responses), time.perf_counter() - started


class RewardGroup:
    """M scorers; a batch is split over them and a scorer that died is restarted and asked again."""

    def __init__(self, placement: Placement, count: int, resources: RoleResources, judges_dir: str,
                 settings: FeedbackSettings, device: DeviceName, threads: int, max_restarts: int):
        self.scorers = [RewardScorer.options(**placement.options("reward", i, resources), max_restarts=max_restarts,
                                             max_task_retries=0).remote(judges_dir, settings, device, threads)
                        for i in range(count)]
        self.attempts = max_restarts + 1

    def ready(self) -> list[dict]:
        return ray.get([scorer.ready.remote() for scorer in self.scorers])

    def provenance(self) -> dict:
        return ray.get(self.scorers[0].provenance.remote())

    def submit(self, prompts: list[str], responses: list[str]) -> tuple[int, list]:
        """Start scoring (returns the pending shares for `collect`). A pair always goes to the same scorer (by a
        stable hash of its text), so each scorer's cache sees every repeat of the pairs it holds."""
        shares: list[list[int]] = [[] for _ in self.scorers]
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            shares[scorer_of(prompt, response, len(self.scorers))].append(row)
        pending = []
        for index, rows in enumerate(shares):
            if rows:
                share_prompts, share_responses = [prompts[row] for row in rows], [responses[row] for row in rows]
                pending.append((index, rows, share_prompts, share_responses,
                                self.scorers[index].score.remote(share_prompts, share_responses)))
        return len(prompts), pending

    def collect(self, submitted: tuple[int, list]) -> tuple[FeedbackScores, float]:
        """The scores of the whole batch in its order, and the longest time a scorer spent on its share."""
        size, pending = submitted
        rewards: list[float] = [0.0] * size
        components: dict[str, list[float]] = {}
        cache_hits, longest = 0, 0.0
        for index, rows, share_prompts, share_responses, ref in pending:
            part, seconds = self._result(index, share_prompts, share_responses, ref)
            for position, row in enumerate(rows):
                rewards[row] = part.rewards[position]
                for name, values in part.components.items():
                    components.setdefault(name, [0.0] * size)[row] = values[position]
            cache_hits, longest = cache_hits + part.cache_hits, max(longest, seconds)
        return FeedbackScores(rewards=rewards, components=components, cache_hits=cache_hits), longest

    def _result(self, index: int, prompts: list[str], responses: list[str], submitted: ray.ObjectRef
                ) -> tuple[FeedbackScores, float]:
        first = [submitted]

        def call() -> tuple[FeedbackScores, float]:
            ref = first.pop() if first else self.scorers[index].score.remote(prompts, responses)
            return ray.get(ref)

        return with_retries(call, f"reward scorer {index}", self.attempts)


def scorer_of(prompt: str, response: str, scorers: int) -> int:
    """The scorer a (prompt, response) pair goes to: the same in every step and every process."""
    digest = hashlib.blake2b(f"{prompt}\0{response}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % scorers
