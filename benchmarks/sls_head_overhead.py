"""What the safe-projection head costs: generation and a training step with and without the head, side by side.

A randomly initialised Llama-architecture model of the given size (no download; the weights do not matter for
timing) runs three variants in turn, interleaved round by round so drift on a noisy machine hits all alike:
no head, a head with one facet (closed form) and a head with `--facets` facets (Dykstra, `--dykstra-steps`
rounds), each at the middle layer. The facets cut through the middle of the layer's states, so about half the
states are moved (the worst case for the projection's work is the same either way: it runs on every state).

Measured per variant (median over `--rounds` rounds after one warm-up round):
- generate: seconds for `--batch` prompts of `--prompt-len` tokens to produce `--new-tokens` tokens each
  (greedy, KV cache, no early stop), and tokens/s;
- train step: seconds for forward + backward + AdamW step on `--batch` sequences of prompt-len + new-tokens.
The table gives each variant's time as a ratio to no head. bfloat16 on a GPU, float32 on the CPU.

    .venv/bin/python benchmarks/sls_head_overhead.py                      # CPU, small model
    python benchmarks/sls_head_overhead.py --hidden 2048 --layers 16 --batch 32 --new-tokens 128   # GPU
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safelatent.methods.safe_projection import SafeProjection
from safelatent.models.hooks import hidden_states_at
from safelatent.models.safe_head import attach, detach


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, args.hidden // 64)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=args.prompt_len + args.new_tokens + 8, pad_token_id=0,
                         eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def cutting_head(model, inputs: torch.Tensor, layer: int, facets: int, steps: int) -> SafeProjection:
    states = hidden_states_at(model, inputs, None, [layer])[layer].float().reshape(-1, model.config.hidden_size)
    weight = torch.randn(facets, states.shape[1], generator=torch.Generator().manual_seed(facets)).to(states.device)
    head = SafeProjection(states.shape[1], facets=facets, steps=steps).to(states.device)
    return head.set_facets(weight, torch.quantile(states @ weight.T, 0.5, dim=0)).requires_grad_(False)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--facets", type=int, default=4)
    parser.add_argument("--dykstra-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/sls_head_overhead.json"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(args, device, dtype)
    layer = args.layers // 2
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, args.vocab, (args.batch, args.prompt_len), generator=generator).to(device)
    sequences = torch.randint(1, args.vocab, (args.batch, args.prompt_len + args.new_tokens),
                              generator=generator).to(device)
    heads = {"no head": None, "1 facet": cutting_head(model, prompts, layer, 1, args.dykstra_steps),
             f"{args.facets} facets": cutting_head(model, prompts, layer, args.facets, args.dykstra_steps)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def generate():
        with torch.no_grad():
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        output = model(input_ids=sequences, labels=sequences)
        output.loss.backward()
        optimizer.step()

    times: dict[str, dict[str, list[float]]] = {name: {"generate": [], "train_step": []} for name in heads}
    for round_number in range(args.rounds + 1):
        for name, head in heads.items():
            if head is None:
                detach(model)
            else:
                attach(model, layer, head)
            model.eval()
            generate_s = timed(generate, device)
            model.train()
            train_s = timed(train_step, device)
            if round_number:  # round 0 warms up
                times[name]["generate"].append(generate_s)
                times[name]["train_step"].append(train_s)
    detach(model)

    tokens = args.batch * args.new_tokens
    baseline = {phase: statistics.median(times["no head"][phase]) for phase in ("generate", "train_step")}
    rows = []
    for name, phases in times.items():
        generate_s, train_s = statistics.median(phases["generate"]), statistics.median(phases["train_step"])
        rows.append({"variant": name, "generate_s": generate_s, "tokens_per_s": tokens / generate_s,
                     "generate_ratio": generate_s / baseline["generate"], "train_step_s": train_s,
                     "train_ratio": train_s / baseline["train_step"]})
    parameters = sum(parameter.numel() for parameter in model.parameters())
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"model: Llama {parameters / 1e6:.1f}M parameters ({args.layers} layers, hidden {args.hidden}), {dtype}, "
          f"{device_name}; head at layer {layer}; batch {args.batch}, {args.prompt_len}+{args.new_tokens} tokens; "
          f"median of {args.rounds} rounds")
    print(f"{'variant':>10} {'generate s':>11} {'tokens/s':>10} {'÷ no head':>10} {'train s':>9} {'÷ no head':>10}")
    for row in rows:
        print(f"{row['variant']:>10} {row['generate_s']:>11.4f} {row['tokens_per_s']:>10.0f} "
              f"{row['generate_ratio']:>10.3f} {row['train_step_s']:>9.4f} {row['train_ratio']:>10.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "device": device_name, "dtype": str(dtype),
                                    "parameters": parameters, "rows": rows,
                                    "settings": {key: str(value) for key, value in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
