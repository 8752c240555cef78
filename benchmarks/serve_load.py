"""Load on the OpenAI-compatible server: requests/s and p50/p99 latency, dynamic batching on and off side by side.

One local Ray cluster serves the same model twice, as two Serve applications that differ only in batching:
`/on` (serve.batch up to `--max-batch` requests) and `/off` (batches of one request; as with batching on, two
batches may be in flight per replica). For each
concurrency level the load generator (asyncio + aiohttp, `concurrency` clients each sending its next request as
soon as the last returns) drives `/on` and then `/off` for `--seconds` each, so both meet the same machine.
Every request is a chat completion of `--max-tokens` tokens (greedy; ignore_eos is not an OpenAI parameter,
so prompts are benign micro-world tasks whose replies are about as long as each other).

Reported per (concurrency, batching): completed requests/s, p50 and p99 latency, completion tokens/s, and the
count of 5xx and other failures; then the throughput ratio on/off per level. The guardrail runs as shipped
(a harm judge on input and output: the micro-world oracle, or a trained harm classifier with --harm-judge;
PII redaction), so the figures include its calls.

    SAFELATENT_API_KEYS=bench .venv/bin/python benchmarks/serve_load.py --model runs/base_models/microworld-llama-XXXX
    python benchmarks/serve_load.py --model DIR --levels 1 8 32 64 --seconds 20 --json out.json
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["What is 12 plus 7?", "What is the capital of France?", "Convert 3 km to meters.",
           "Spell the word 'garden' backwards.", "What is 45 minus 18?", "What is the capital of Japan?"]


def guardrails(harm_judge: str) -> dict:
    return {"harm_judge": harm_judge, "input_harm": "block", "output_harm": "block", "pii": "redact"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def deploy(args: argparse.Namespace, port: int) -> None:
    from ray import serve

    from pipelines.deploy import application
    from safelatent.serving.settings import ServeConfig

    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    for name, enabled in (("on", True), ("off", False)):
        config = ServeConfig.model_validate({
            "model": args.model, "model_name": "bench", "device": args.device, "log_level": "WARNING",
            "model_cpus": 0, "torch_threads": args.threads,
            "batching": {"enabled": enabled, "max_batch_size": args.max_batch, "batch_wait_timeout_s": args.wait},
            "limits": {"max_tokens": args.max_tokens, "default_max_tokens": args.max_tokens},
            "rate_limit": {"requests_per_minute": 1e9, "burst": 1_000_000},
            "guardrails": guardrails(args.harm_judge) if args.guardrails else {"pii": "off"},
        })
        serve.run(application(config), name=f"bench-{name}", route_prefix=f"/{name}")


async def drive(url: str, key: str, concurrency: int, seconds: float, max_tokens: int, stream: bool = False) -> dict:
    import aiohttp

    latencies: list[float] = []
    first_tokens: list[float] = []  # streamed: seconds to the first chunk with content
    tokens = 0
    server_errors = 0
    other_failures = 0
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {key}"}

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal tokens, server_errors, other_failures
        turn = index
        while time.perf_counter() < deadline:
            body = {"model": "bench", "temperature": 0, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": PROMPTS[turn % len(PROMPTS)]}]}
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            turn += 1
            started = time.perf_counter()
            first = None
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    if response.status >= 500:
                        server_errors += 1
                        continue
                    if response.status != 200:
                        other_failures += 1
                        continue
                    if not stream:
                        usage = (await response.json())["usage"]
                    else:
                        usage = None
                        async for line in response.content:
                            event = line.decode().strip()
                            if not event.startswith("data: ") or event == "data: [DONE]":
                                continue
                            chunk = json.loads(event[len("data: "):])
                            if "error" in chunk:
                                raise ValueError(chunk["error"])
                            if first is None and any(choice["delta"].get("content") for choice in chunk["choices"]):
                                first = time.perf_counter() - started
                            usage = chunk.get("usage") or usage
                        if usage is None:
                            raise ValueError("the stream ended without a usage chunk")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                other_failures += 1
                continue
            latencies.append(time.perf_counter() - started)
            if first is not None:
                first_tokens.append(first)
            tokens += usage["completion_tokens"]

    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client(index, session) for index in range(concurrency)))
    elapsed = time.perf_counter() - started

    def quantile(values: list[float], q: float) -> float | None:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

    row = {"requests": len(latencies), "seconds": round(elapsed, 2),
           "requests_per_s": round(len(latencies) / elapsed, 3), "tokens_per_s": round(tokens / elapsed, 1),
           "p50_s": quantile(latencies, 0.50), "p99_s": quantile(latencies, 0.99),
           "mean_s": statistics.fmean(latencies) if latencies else None,
           "server_errors": server_errors, "other_failures": other_failures}
    if stream:
        row.update(first_token_p50_s=quantile(first_tokens, 0.50), first_token_p99_s=quantile(first_tokens, 0.99))
    return row


def decoder_only(args: argparse.Namespace) -> None:
    """The decoder alone, in this process: tokens/s at batch 1 and at --max-batch, same prompts, greedy."""
    import torch

    from safelatent.models.loading import load
    from safelatent.serving.decoding import Decoder, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load(args.model, device=args.device)
    decoder = Decoder(loaded.model, loaded.tokenizer)
    rates = {}
    for size in (1, args.max_batch):
        prompts = [decoder.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(size)]
        params = [SamplingParams(max_tokens=args.max_tokens, temperature=0)] * size
        decoder.complete(prompts, params)  # warm-up
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            tokens = sum(tokens for _, tokens, _ in decoder.complete(prompts, params))
            runs.append(tokens / (time.perf_counter() - started))
        rates[size] = statistics.median(runs)
        print(f"batch {size:>3}: {rates[size]:8.1f} tokens/s (median of 5, {torch.get_num_threads()} torch threads)")
    print(f"batch {args.max_batch} / batch 1: {rates[args.max_batch] / rates[1]:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="Model directory (or any source ServeConfig accepts).")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=15.0, help="Load per (level, batching).")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--wait", type=float, default=0.05, help="batch_wait_timeout_s")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per model replica (0: default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--guardrails", action=argparse.BooleanOptionalAction, default=True,
                        help="Run the guardrail as shipped (default) or serve the bare model (--no-guardrails).")
    parser.add_argument("--stream", action="store_true",
                        help="Stream every reply (SSE, as chat UIs do) and also report the time to the first token.")
    parser.add_argument("--harm-judge", default="microworld-oracle",
                        help="The guardrail's harm judge: the micro-world oracle (default) or a harm classifier "
                             "directory (<judges build>/harm_classifier), as a real deployment would run.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--decoder-only", action="store_true", help="Time the decoder in this process instead "
                                                                    "(batch 1 against --max-batch); no server.")
    args = parser.parse_args()
    if args.decoder_only:
        decoder_only(args)
        return

    import ray
    from ray import serve

    key = os.environ.setdefault("SAFELATENT_API_KEYS", "benchmark-key")
    port = free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        deploy(args, port)
        results = []
        for level in args.levels:
            for name in ("on", "off"):
                url = f"http://127.0.0.1:{port}/{name}/v1/chat/completions"
                asyncio.run(drive(url, key.split(",")[0], level, min(3.0, args.seconds), args.max_tokens,
                                  args.stream))  # warm
                row = {"concurrency": level, "batching": name,
                       **asyncio.run(drive(url, key.split(",")[0], level, args.seconds, args.max_tokens,
                                           args.stream))}
                results.append(row)
                print(json.dumps(row), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    first = f" {'TTFT p50':>8} {'TTFT p99':>8}" if args.stream else ""
    print(f"\n{'conc':>4} {'batching':>8} {'req/s':>8} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7}{first} {'5xx':>4} "
          f"{'fail':>4}")
    for row in results:
        first = (f" {row['first_token_p50_s'] or 0:>8.3f} {row['first_token_p99_s'] or 0:>8.3f}" if args.stream
                 else "")
        print(f"{row['concurrency']:>4} {row['batching']:>8} {row['requests_per_s']:>8.2f} {row['tokens_per_s']:>8.1f} "
              f"{row['p50_s'] or 0:>7.3f} {row['p99_s'] or 0:>7.3f}{first} {row['server_errors']:>4} "
              f"{row['other_failures']:>4}")
    print("\nthroughput with batching / without, per concurrency:")
    ratios = {}
    for level in args.levels:
        on, off = (next(r for r in results if r["concurrency"] == level and r["batching"] == b) for b in ("on", "off"))
        ratios[level] = on["requests_per_s"] / off["requests_per_s"] if off["requests_per_s"] else None
        p99 = f"p99 on/off {on['p99_s'] / off['p99_s']:.2f}" if on["p99_s"] and off["p99_s"] else ""
        print(f"  concurrency {level:>3}: {ratios[level]:.2f}x  {p99}")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "args": vars(args),
                                         "results": results, "ratios": ratios}, indent=2, default=str))


if __name__ == "__main__":
    main()
