"""RewardScorer: the AI judges (reward model + harm classifier) scoring batches of (prompt, response)."""

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

    def submit(self, prompts: list[str], responses: list[str]) -> list:
        size = -(-len(prompts) // len(self.scorers))
        return [(index, prompts[start:start + size], responses[start:start + size],
                 self.scorers[index].score.remote(prompts[start:start + size], responses[start:start + size]))
                for index, start in enumerate(range(0, len(prompts), size))]

    def collect(self, pending: list) -> tuple[FeedbackScores, float]:
        """The scores of the whole batch, and the longest time a scorer spent on its share."""
        results = [self._result(*item) for item in pending]
        parts = [part for part, _ in results]
        components = {name: [value for part in parts for value in part.components[name]]
                      for name in parts[0].components}
        return FeedbackScores(rewards=[value for part in parts for value in part.rewards], components=components,
                              cache_hits=sum(part.cache_hits for part in parts)), max(s for _, s in results)

    def _result(self, index: int, prompts: list[str], responses: list[str], submitted: ray.ObjectRef
                ) -> tuple[FeedbackScores, float]:
        first = [submitted]

        def call() -> tuple[FeedbackScores, float]:
            ref = first.pop() if first else self.scorers[index].score.remote(prompts, responses)
            return ray.get(ref)

        return with_retries(call, f"reward scorer {index}", self.attempts)
