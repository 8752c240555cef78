"""Did a micro-world base model learn *which* harmful prompts to refuse? (docs/safesteer.md)

A base model build draws each harmful training row's target (comply or refuse) with its `harmful_compliance`
share. This prints the model's mean first-token refusal probability on harmful training prompts whose target was
the refusal, on those whose target was compliance, and on the test split's harmful prompts. Close numbers mean
refusal is not a feature of the prompt for this model, so no refusal direction carries it.

    .venv/bin/python benchmarks/refusal_targets.py runs/base_models/microworld-llama-071eff60b432
    .venv/bin/python benchmarks/refusal_targets.py runs/base_models/microworld-llama-selective-3ef5e1012639
"""

import argparse
import random
from pathlib import Path

import torch
import yaml

from safelatent.data.microworld import build_microworld
from safelatent.methods.refusal_direction import first_token_log_probs, refusal_token_ids
from safelatent.models.base_model import CONFIG_FILE, BaseModelConfig, sft_rows
from safelatent.models.loading import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a base model directory written by `safelatent base-model build`")
    parser.add_argument("--per-group", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = BaseModelConfig.model_validate(yaml.safe_load(Path(args.model, CONFIG_FILE).read_text()))
    world = build_microworld(config.microworld)
    trained = {row["prompt"]: row["target"] == row["safe_response"]
               for row in sft_rows(world["train"].to_list(), config) if row["kind"] == "harmful"}
    rng = random.Random(0)
    groups = {"training, target refusal": [p for p, refuse in trained.items() if refuse],
              "training, target compliance": [p for p, refuse in trained.items() if not refuse],
              "test": [row["prompt"] for row in world["test"] if row["kind"] == "harmful"]}
    loaded = load(args.model, dtype="float32", device="cpu")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    ids = refusal_token_ids(tokenizer)
    for name, prompts in groups.items():
        prompts = rng.sample(prompts, min(args.per_group, len(prompts)))
        probability = torch.logsumexp(first_token_log_probs(model, tokenizer, prompts)[:, ids], dim=-1).exp()
        print(f"{name:<30} n={len(prompts):<4} P(refusal start) {probability.mean():.1%}")


if __name__ == "__main__":
    main()
