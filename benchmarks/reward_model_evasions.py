"""Does a judges build's reward model rank a refusal above an evasion? (docs/judges.md)

Scores the reward model of a judges build on the micro-world test split's evasion pairs (refusal ≻ evasion for
harmful and jailbreak prompts, helpful answer ≻ evasion for benign and borderline ones; `pairs.evasions`), made
with the build's own seed and test pair count, whether or not the build trained on such pairs.

    .venv/bin/python benchmarks/reward_model_evasions.py runs/judges/judges-71f2e707a749
"""

import argparse
from pathlib import Path

from safelatent.config import load_config
from safelatent.data.microworld import build_microworld
from safelatent.judges.accuracy import grouped_accuracy
from safelatent.judges.build import JudgesConfig
from safelatent.judges.preferences import microworld_pairs
from safelatent.judges.reward_model import RewardModel, pairwise_wins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("judges", type=Path, help="a judges build directory (runs/judges/judges-KEY)")
    judges = parser.parse_args().judges
    config = load_config(JudgesConfig, judges / "config.yaml")
    rows = list(build_microworld(config.microworld)["test"])
    pairs = [pair for pair in microworld_pairs(rows, "test", config.pairs.test_per_group, seed=config.seed,
                                               evasions=True) if pair.recipe.endswith("-vs-evasion")]
    wins = pairwise_wins(RewardModel.load(judges / "reward_model", device="cpu"), pairs)
    print(f"reward model of {judges}: pairwise accuracy on the test split's evasion pairs")
    for group, accuracy in grouped_accuracy(wins, [pair.group for pair in pairs]).items():
        low, high = accuracy.ci95
        print(f"  {group:32s} {accuracy.value:6.1%}  [{low:.1%}, {high:.1%}]  n={accuracy.n}")


if __name__ == "__main__":
    main()
