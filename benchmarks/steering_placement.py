"""Where to add a refusal direction: at every position, or only at the prompt's last position (docs/safesteer.md).

For one refusal-direction candidate (difference of means of harmful and benign training prompts at a prompt
position and layer), greedy replies to validation prompts with α·r added at every position ("all") and only at the
last prompt position ("prompt_end"), for each α: the share of harmful prompts refused, benign task accuracy and
the share of benign + borderline prompts refused.

    .venv/bin/python benchmarks/steering_placement.py --model runs/base_models/microworld-llama-071eff60b432 \\
        --microworld runs/demo/microworld --position -1 --layer 2 --scales 0.5
    .venv/bin/python benchmarks/steering_placement.py ... --position -2 --layer 1 --scales 0.8
"""

import argparse
import json

import torch

from safelatent.data.answer_check import check_answer
from safelatent.data.microworld import load_microworld
from safelatent.data.responses import is_refusal
from safelatent.methods.direction_transfer import sample_rows
from safelatent.methods.refusal_direction import candidate_directions, steer
from safelatent.models.generate import generate
from safelatent.models.loading import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--microworld", required=True, help="a saved micro-world (safelatent data build)")
    parser.add_argument("--position", type=int, default=-2)
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--per-kind", type=int, default=40, help="validation prompts per kind")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    world = load_microworld(args.microworld)
    train, validation = world["train"].to_list(), world["validation"].to_list()
    loaded = load(args.model, dtype="float32", device="cpu")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    harmful = [row["prompt"] for row in sample_rows(train, ["harmful"], 128, 0)]
    benign = [row["prompt"] for row in sample_rows(train, ["benign"], 128, 0)]
    (candidate,) = candidate_directions(model, tokenizer, harmful, benign, positions=[args.position],
                                        layers=[args.layer])
    rows = {kind: sample_rows(validation, [kind], args.per_kind, 1) for kind in ("harmful", "benign", "borderline")}

    def measure() -> dict[str, float]:
        replies = {kind: generate(model, tokenizer, [row["prompt"] for row in chosen], max_new_tokens=40)
                   for kind, chosen in rows.items()}
        safe_side = replies["benign"] + replies["borderline"]
        return {"harmful_refused": sum(map(is_refusal, replies["harmful"])) / len(replies["harmful"]),
                "task_accuracy": sum(check_answer(reply, row["answer"]) for reply, row in
                                     zip(replies["benign"], rows["benign"], strict=True)) / len(rows["benign"]),
                "over_refusal": sum(map(is_refusal, safe_side)) / len(safe_side)}

    results = [{"placement": "none", "scale": 0.0, **measure()}]
    for scale in args.scales:
        for placement in ("all", "prompt_end"):
            with steer(model, candidate.direction, candidate.layer, scale, placement):
                results.append({"placement": placement, "scale": scale, **measure()})
    print(f"direction of position {args.position}, layer {args.layer} (norm {candidate.norm:.1f}); "
          f"{args.per_kind} validation prompts per kind")
    print(f"{'placement':<12}{'α':>6}{'harmful refused':>18}{'task accuracy':>16}{'over-refusal':>15}")
    for row in results:
        print(f"{row['placement']:<12}{row['scale']:>6g}{row['harmful_refused']:>18.1%}{row['task_accuracy']:>16.1%}"
              f"{row['over_refusal']:>15.1%}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
