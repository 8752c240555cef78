"""Two methods over several training seeds: harmful replies pooled over the seeds, with Fisher's exact test.

Each evaluation directory is what `safelatent eval --out DIR` writes (results.json and responses.jsonl). For
every run it prints the harmful replies to the harmful prompts and to the harmful and jailbreak prompts
together, the refusals of harmful prompts, task accuracy and over-refusal; then, per method, the counts pooled
over its runs, and the two-sided Fisher exact test between the first two methods' pooled counts. (docs/sls.md)

    .venv/bin/python benchmarks/seed_comparison.py \\
        --method RLAIF-PPO runs/eval/rlaif-ppo-vs-base runs/eval/rlaif-ppo-s1 runs/eval/rlaif-ppo-s2 \\
        --method SLS-RLAIF runs/eval/sls-rlaif-layer0-q0.75 runs/eval/layer0-q0.75-s1 runs/eval/layer0-q0.75-s2
"""

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from safelatent.evaluation.intervals import fisher_exact


@dataclass(frozen=True)
class Counts:
    harmful: int  # harmful replies to harmful prompts
    harmful_n: int
    attacked: int  # harmful replies to harmful and jailbreak prompts
    attacked_n: int
    refusals: int  # refusals of harmful prompts
    task_accuracy: float
    over_refusal: float

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.harmful + other.harmful, self.harmful_n + other.harmful_n, self.attacked + other.attacked,
                      self.attacked_n + other.attacked_n, self.refusals + other.refusals, math.nan, math.nan)


def counts(directory: Path) -> Counts:
    rows = [json.loads(line) for line in (directory / "responses.jsonl").read_text().splitlines() if line.strip()]
    metrics = json.loads((directory / "results.json").read_text())["metrics"]
    harmful = [row for row in rows if row["kind"] == "harmful"]
    attacked = [row for row in rows if row["kind"] in ("harmful", "jailbreak")]
    if not harmful:
        raise SystemExit(f"{directory}: no harmful prompts were evaluated")
    return Counts(sum(bool(row["harmful"]) for row in harmful), len(harmful),
                  sum(bool(row["harmful"]) for row in attacked), len(attacked),
                  sum(bool(row["refused"]) for row in harmful),
                  metrics["task_accuracy"]["value"], metrics["over_refusal"]["value"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", nargs="+", action="append", required=True, metavar=("NAME", "EVAL_DIR"),
                        help="a method's name, then one evaluation directory per training seed")
    methods = parser.parse_args().method
    if any(len(method) < 2 for method in methods):
        raise SystemExit("each --method needs a name and at least one evaluation directory")
    pooled: dict[str, Counts] = {}
    print(f"{'run':48s} {'harmful':>10s} {'+jailbreak':>10s} {'refusals':>9s} {'task acc':>9s} {'over-ref':>9s}")
    for name, *directories in methods:
        runs = [counts(Path(directory)) for directory in directories]
        for directory, run in zip(directories, runs, strict=True):
            print(f"{name + ' ' + directory:48s} {run.harmful:>4d}/{run.harmful_n:<5d} {run.attacked:>4d}/"
                  f"{run.attacked_n:<5d} {run.refusals:>9d} {run.task_accuracy:9.1%} {run.over_refusal:9.1%}")
        total = runs[0]
        for run in runs[1:]:
            total = total + run
        pooled[name] = total
        accuracy = sum(run.task_accuracy for run in runs) / len(runs)
        over = sum(run.over_refusal for run in runs) / len(runs)
        print(f"{name + ' pooled (mean of the rates)':48s} {total.harmful:>4d}/{total.harmful_n:<5d} "
              f"{total.attacked:>4d}/{total.attacked_n:<5d} {total.refusals:>9d} {accuracy:9.1%} {over:9.1%}")
    if len(pooled) >= 2:
        (first, a), (second, b) = list(pooled.items())[:2]
        print(f"Fisher's exact test, {first} vs {second}, pooled: harmful prompts p = "
              f"{fisher_exact(a.harmful, a.harmful_n, b.harmful, b.harmful_n):.3g}; harmful and jailbreak p = "
              f"{fisher_exact(a.attacked, a.attacked_n, b.attacked, b.attacked_n):.3g}")


if __name__ == "__main__":
    main()
