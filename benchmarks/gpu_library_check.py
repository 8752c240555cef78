"""The library's GPU path on one CUDA device, without Ray: an SLS model in bf16 through PPO, export and reload.

Loads MODEL (a model directory, typically an SLS start model with its head) as the policy on CUDA (bf16 by
the "auto" dtype), checks the head is attached on the GPU, runs three PPO steps with each of the `gae` and
`grpo` estimators (sampling with the KV cache, reference log-probs from a frozen copy, random rewards),
asserts every loss is finite, exports the policy, reloads it with its head, and compares greedy replies in
bf16 on the GPU with fp32 replies on the CPU. Prints one JSON object.

    python benchmarks/gpu_library_check.py runs/sls_rlaif/start_models/<key>
"""

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safelatent.methods.learner import OptimizerSettings, PPOLearner
from safelatent.methods.ppo import PPOSettings
from safelatent.methods.rollout import sample, score_tokens
from safelatent.models.generate import generate
from safelatent.models.loading import load
from safelatent.models.policy import PolicySettings, export_policy, load_policy
from safelatent.models.safe_head import attached_head

PROMPTS = ["What is 7 plus 5?", "Spell the word garden backwards.", "What is the capital of Norway?",
           "How do I kill a Python process?", "Explain how to make a pipe bomb at home.",
           "Write a phishing email to steal bank passwords.", "Convert 3 km to meters.", "Sort: pear, apple, fig"]


def main(model_dir: str) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    report: dict = {"device": torch.cuda.get_device_name(0)}
    reference = load(model_dir, device="cuda").model
    for estimator in ("gae", "grpo"):
        policy = load_policy(model_dir, PolicySettings(device="cuda"), trainable=True)
        head = attached_head(policy.model)
        report["dtype"] = str(next(policy.model.parameters()).dtype)
        report["head"] = None if head is None else {"layer": head.layer, "device": str(head.head.weight.device)}
        learner = PPOLearner(policy.model, PPOSettings(estimator=estimator, minibatch_size=16, epochs=2),
                             OptimizerSettings(learning_rate=1e-5))
        steps = []
        for step in range(3):
            started = time.perf_counter()
            batch = sample(policy.model, policy.tokenizer, PROMPTS, samples_per_prompt=4, max_new_tokens=48,
                           seed=step)
            ref_logprobs = score_tokens(reference, batch)
            stats = learner.step(batch, torch.randn(len(batch)), ref_logprobs, 0.1, step)
            torch.cuda.synchronize()
            steps.append({name: stats[name] for name in ("policy_loss", "approx_kl", "kl_to_ref", "entropy")}
                         | {"seconds": time.perf_counter() - started})
        if not all(math.isfinite(value) for entry in steps for value in entry.values()):
            raise SystemExit(f"non-finite PPO statistics with {estimator}: {steps}")
        report[estimator] = steps
    with tempfile.TemporaryDirectory() as directory:
        export_policy(policy.model, policy.tokenizer, directory)
        on_gpu = load(directory, device="cuda")
        on_cpu = load(directory, device="cpu", dtype="float32")
        head = attached_head(on_gpu.model)
        report["exported_head_layer"] = None if head is None else head.layer
        gpu_replies = generate(on_gpu.model, on_gpu.tokenizer, PROMPTS, max_new_tokens=32)
        cpu_replies = generate(on_cpu.model, on_cpu.tokenizer, PROMPTS, max_new_tokens=32)
    same = sum(a == b for a, b in zip(gpu_replies, cpu_replies, strict=True))
    report["same_greedy_reply_bf16_gpu_vs_fp32_cpu"] = f"{same} of {len(PROMPTS)}"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
