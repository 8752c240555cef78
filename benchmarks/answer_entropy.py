"""How sure each model is of correct answers: per-token entropy and negative log-likelihood, teacher-forced.

The replies come from one evaluation directory (what `safelatent eval --out DIR` writes): its correct answers to
benign tasks, optionally of some task families only. Every model reads the same replies, so the figures compare
the models on identical tokens. A model whose sampled task accuracy falls while its greedy accuracy holds has
usually grown less sure of tokens it still ranks first; the entropy shows it. (docs/sls.md)

    .venv/bin/python benchmarks/answer_entropy.py --replies runs/eval/v1-base-e0 \\
        runs/base_models/microworld-llama-705f121f0b97 runs/sls_rlaif/sls-q0.9-grpo/model
"""

import argparse
import json
from pathlib import Path

import torch

from safelatent.models.generate import chat_prompt
from safelatent.models.loading import load


def correct_replies(directory: Path, families: set[str] | None, limit: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (directory / "responses.jsonl").read_text().splitlines() if line.strip()]
    chosen = [(row["prompt"], row["response"]) for row in rows
              if row["kind"] == "benign" and row["correct"] and (families is None or row["category"] in families)]
    if not chosen:
        raise SystemExit(f"{directory}/responses.jsonl has no correct benign replies"
                         f"{'' if families is None else ' in ' + ', '.join(sorted(families))}")
    return chosen[:limit]


def answer_statistics(model_dir: str, replies: list[tuple[str, str]]) -> dict[str, float]:
    """Mean per reply token: entropy of the next-token distribution, NLL of the reply's token, and the share of
    reply tokens the model gives less than 0.9."""
    loaded = load(model_dir, dtype="float32", device="cpu")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    entropy = nll = unsure = tokens = 0.0
    for prompt, reply in replies:
        prompt_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + reply_ids])).logits[0, len(prompt_ids) - 1:-1]
        logprobs = logits.float().log_softmax(-1)
        chosen = logprobs[torch.arange(len(reply_ids)), torch.tensor(reply_ids)]
        entropy += -(logprobs.exp() * logprobs).sum().item()
        nll += -chosen.sum().item()
        unsure += (chosen.exp() < 0.9).sum().item()
        tokens += len(reply_ids)
    return {"entropy": entropy / tokens, "nll": nll / tokens, "unsure": unsure / tokens, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model directories (an SLS model runs with its head)")
    parser.add_argument("--replies", required=True, type=Path, help="an evaluation directory with responses.jsonl")
    parser.add_argument("--families", default=None, help="comma-separated task families to keep (default: all)")
    parser.add_argument("--limit", type=int, default=300, help="at most this many replies")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    replies = correct_replies(args.replies, set(args.families.split(",")) if args.families else None, args.limit)
    print(f"{len(replies)} correct replies from {args.replies}")
    print(f"{'model':60s} {'entropy/token':>14s} {'NLL/token':>10s} {'p < 0.9':>8s}")
    for model_dir in args.models:
        found = answer_statistics(model_dir, replies)
        print(f"{model_dir:60s} {found['entropy']:14.4f} {found['nll']:10.4f} {found['unsure']:8.2%}")


if __name__ == "__main__":
    main()
