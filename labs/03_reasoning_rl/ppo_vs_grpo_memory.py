"""What GRPO saves by dropping the critic: the memory of one RL training step, GRPO vs PPO, from `alignlab memory`.

    python labs/03_reasoning_rl/ppo_vs_grpo_memory.py [--seq 1024] [--batch 16] [--rank 16] [--rollouts 128]

Every model in an RL step is one of three kinds, and `estimate_memory` prices each:

    trained    weights + gradients + AdamW states + activations      the policy; PPO's critic too
    frozen     weights only (no gradient, no optimizer, no backward)   the reference pi_ref (a copy, or nothing
                                                                       with LoRA: the base with adapters off)

    GRPO, beta = 0 (trl's default)   policy
    GRPO, beta > 0                   policy + reference
    PPO                              policy + critic + reference     (critic: the same network with a scalar head)

The critic is priced as a second training step of the same model: same weights, same trainable parameters
(full or LoRA), same micro-batch. That counts both models' short-lived buffers at the peak at once, so PPO's
figure is an upper estimate by at most one model's "recomputed block" + "working memory" rows. The models are
Qwen2.5-0.5B/1.5B-Instruct, whose config.json files are next to this script (the tool needs no download).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alignlab.memory import estimate_memory, load_config

HERE = Path(__file__).parent
MODELS = {"Qwen2.5-0.5B-Instruct": HERE / "models" / "qwen2.5-0.5b-instruct.json",
          "Qwen2.5-1.5B-Instruct": HERE / "models" / "qwen2.5-1.5b-instruct.json"}


def rows(config_path: Path, method: str, seq: int, batch: int, rank: int) -> list[tuple[str, float]]:
    config = load_config(config_path)
    step = estimate_memory(config, method=method, seq=seq, batch=batch, rank=rank, grad_ckpt=True, dtype="bf16")
    # the reference: a frozen bf16 copy for full fine-tuning; nothing for LoRA (the base with adapters disabled)
    reference = 2 * config.num_params() if method == "full" else 0
    return [("GRPO, beta = 0: policy", step.total),
            ("GRPO, beta > 0: policy + reference", step.total + reference),
            ("PPO: policy + critic + reference", 2 * step.total + reference)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=1024, help="prompt + completion tokens per row (default 1024)")
    p.add_argument("--batch", type=int, default=16, help="completions per micro-batch (default 16)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--rollouts", type=int, default=128, help="completions generated per rollout batch (default 128)")
    args = p.parse_args()
    print(f"bf16, AdamW, gradient checkpointing, {args.batch} completions x {args.seq} tokens per micro-batch")
    for name, path in MODELS.items():
        for method in ("full", "lora"):
            table = rows(path, method, args.seq, args.batch, args.rank)
            ppo = table[-1][1]
            label = "full fine-tuning" if method == "full" else f"LoRA r={args.rank}, all-linear"
            print(f"\n{name}, {label}")
            for what, total in table:
                print(f"  {what:36s} {total / 1e9:6.2f} GB   {total / ppo:6.1%} of PPO")
        kv = load_config(path).kv_cache_bytes(args.rollouts, args.seq, bytes_per_elem=2)
        print(f"  (generation, before the step: the KV cache of {args.rollouts} completions x {args.seq} tokens, "
              f"{kv / 1e9:.2f} GB, the same for both)")


if __name__ == "__main__":
    main()
