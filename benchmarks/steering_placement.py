"""Where to add a refusal direction, and which contrast makes it (docs/safesteer.md).

For one refusal-direction candidate at a prompt position and layer — the difference of means of harmful and benign
training prompts (`--contrast harmful_vs_harmless`), or of the harmful training prompts the model refuses and those
it answers (`--contrast refused_vs_answered`) — greedy replies to validation prompts with α·r added at every
position ("all") and only at the last prompt position ("prompt_end"), for each α: the share of harmful prompts
refused, benign task accuracy, the share of benign + borderline prompts refused and of borderline prompts alone.

    .venv/bin/python benchmarks/steering_placement.py --model runs/base_models/microworld-llama-071eff60b432 \\
        --microworld runs/demo/microworld --position -1 --layer 2 --scales 0.5
    .venv/bin/python benchmarks/steering_placement.py ... --position -2 --layer 1 --scales 0.8
    .venv/bin/python benchmarks/steering_placement.py --model runs/base_models/microworld-llama-selective-3ef5e1012639 \
        --microworld runs/demo/microworld --position -1 --layer 3 --scales 0.75 --placements prompt_end \
        --contrast harmful_vs_harmless refused_vs_answered
"""

import argparse
import json

import torch

from safelatent.data.answer_check import check_answer
from safelatent.data.microworld import load_microworld
from safelatent.data.responses import is_refusal
from safelatent.methods.direction_transfer import sample_rows
from safelatent.methods.refusal_direction import candidate_directions, split_by_refusal, steer
from safelatent.models.generate import generate
from safelatent.models.loading import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--microworld", required=True, help="a saved micro-world (safelatent data build)")
    parser.add_argument("--position", type=int, default=-2)
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--placements", nargs="+", choices=["all", "prompt_end"], default=["all", "prompt_end"])
    parser.add_argument("--contrast", nargs="+", choices=["harmful_vs_harmless", "refused_vs_answered"],
                        default=["harmful_vs_harmless"])
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
    refused, answered = split_by_refusal(model, tokenizer, harmful)
    contrasts = {"harmful_vs_harmless": (harmful, benign), "refused_vs_answered": (refused, answered)}
    rows = {kind: sample_rows(validation, [kind], args.per_kind, 1) for kind in ("harmful", "benign", "borderline")}

    def measure() -> dict[str, float]:
        replies = {kind: generate(model, tokenizer, [row["prompt"] for row in chosen], max_new_tokens=40)
                   for kind, chosen in rows.items()}
        safe_side = replies["benign"] + replies["borderline"]
        return {"harmful_refused": sum(map(is_refusal, replies["harmful"])) / len(replies["harmful"]),
                "task_accuracy": sum(check_answer(reply, row["answer"]) for reply, row in
                                     zip(replies["benign"], rows["benign"], strict=True)) / len(rows["benign"]),
                "over_refusal": sum(map(is_refusal, safe_side)) / len(safe_side),
                "borderline_refused": sum(map(is_refusal, replies["borderline"])) / len(replies["borderline"])}

    print(f"{args.per_kind} validation prompts per kind; of 128 harmful training prompts the model refuses "
          f"{len(refused)} (first reply token)")
    results = [{"contrast": "-", "placement": "none", "scale": 0.0, **measure()}]
    for contrast in args.contrast:
        positive, negative = contrasts[contrast]
        if len(positive) < 2 or len(negative) < 2:
            raise SystemExit(f"--contrast {contrast}: one side has fewer than 2 prompts ({len(positive)} vs "
                             f"{len(negative)})")
        (candidate,) = candidate_directions(model, tokenizer, positive, negative, positions=[args.position],
                                            layers=[args.layer])
        print(f"{contrast}: direction of position {args.position}, layer {args.layer} (norm {candidate.norm:.1f})")
        for scale in args.scales:
            for placement in args.placements:
                with steer(model, candidate.direction, candidate.layer, scale, placement):
                    results.append({"contrast": contrast, "placement": placement, "scale": scale, **measure()})
    print(f"{'contrast':<22}{'placement':<12}{'α':>6}{'harmful refused':>17}{'task accuracy':>15}"
          f"{'over-refusal':>14}{'borderline refused':>20}")
    for row in results:
        print(f"{row['contrast']:<22}{row['placement']:<12}{row['scale']:>6g}{row['harmful_refused']:>17.1%}"
              f"{row['task_accuracy']:>15.1%}{row['over_refusal']:>14.1%}{row['borderline_refused']:>20.1%}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
