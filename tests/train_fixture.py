"""A tiny, fully deterministic training run for the trainer tests (importable, and runnable as a script).

    python tests/train_fixture.py OUT_DIR [--steps 20] [--resume] [--kill-at STEP] [--kill-in-save STEP]

--kill-at S      SIGKILLs the process right after the checkpoint of step S is written.
--kill-in-save S SIGKILLs the process in the middle of writing step S's checkpoint.
Under torchrun the global batch is split over the processes, so every world size sees the same data.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch

from alignlab.model import CausalLM, preset
from alignlab.objectives import linear_cross_entropy, lm_loss
from alignlab.train.distributed import Dist, init_distributed
from alignlab.train.trainer import TrainConfig, Trainer, set_seed, unwrap

VOCAB, BLOCK = 64, 16


class RandomWindows:
    """Windows of a fixed random token stream; the global batch is drawn once and split across ranks."""

    def __init__(self, global_batch: int, dist: Dist, seed: int = 0):
        self.tokens = torch.randint(0, VOCAB, (4096,), generator=torch.Generator().manual_seed(123))
        self.global_batch, self.dist = global_batch, dist
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self) -> dict:
        ix = torch.randint(len(self.tokens) - BLOCK - 1, (self.global_batch,), generator=self.gen)
        per = self.global_batch // self.dist.world
        ix = ix[self.dist.rank * per:(self.dist.rank + 1) * per]
        x = torch.stack([self.tokens[i:i + BLOCK] for i in ix])
        y = torch.stack([self.tokens[i + 1:i + BLOCK + 1] for i in ix])
        return {"input_ids": x, "labels": y}

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def lm_step(model, batch, normaliser):
    return lm_loss(model(batch["input_ids"]), batch["labels"], normaliser)


def fused_lm_step(model, batch, normaliser):  # the pretraining recipe's path: no logits tensor
    hidden = model(batch["input_ids"], head=False)
    return linear_cross_entropy(hidden, unwrap(model).lm_head.weight, batch["labels"], normaliser)


def make_trainer(out_dir, steps: int = 20, global_batch: int = 8, dist: Dist | None = None, fused: bool = False,
                 **train_kw):
    dist = dist or Dist()
    set_seed(0)
    model = CausalLM(preset("llama", vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            max_seq_len=BLOCK))
    kw = dict(max_steps=steps, lr=3e-3, warmup_steps=3, eval_every=0, save_every=5, keep_last=3,
              peak_flops=1e11, plot=False)
    cfg = TrainConfig(**{**kw, **train_kw})
    data = RandomWindows(global_batch // cfg.grad_accum, dist)
    step = fused_lm_step if fused else lm_step
    return Trainer(cfg, model, data, step, out_dir, dist=dist,
                   flops_per_token=model.config.flops_per_token(BLOCK, training=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-at", type=int, default=None)
    ap.add_argument("--kill-in-save", type=int, default=None)
    ap.add_argument("--distributed", default="ddp")
    ap.add_argument("--fused", action="store_true", help="the fused linear cross-entropy loss")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    trainer = make_trainer(args.out, args.steps, dist=dist, distributed=args.distributed, fused=args.fused)
    if args.kill_at is not None:
        def hook(t):
            if t.step == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        trainer.on_checkpoint = hook
    if args.kill_in_save is not None:
        import alignlab.train.checkpoint as ckpt

        real_save = torch.save

        def dying_save(obj, f, *a, **k):
            if trainer.step == args.kill_in_save:
                f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then the process dies
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *a, **k)
        ckpt.torch.save = dying_save
    result = trainer.fit(resume=args.resume)
    print(result["status"], result["step"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
