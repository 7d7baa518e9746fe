"""Red-team, then harden: the attacks that worked become SafeDPO pairs, and the held-out probes measure the change.

    result = harden(HardenConfig(model="runs/pipeline/dpo/model", out_dir="runs/harden", seed=0))
    result["test_after"]["all"]["asr"]        # ASR on probes no pair was made from, with its interval

1. The red team (eval.redteam) sends its train-split probes to the model.
2. Each attack that succeeded becomes a pair: the refusal chosen over the model's own reply, which SafeDPO marks
   unsafe (`rejected_unsafe`); each look-alike in the same frames becomes a pair of its answer chosen over the
   refusal, so that the model learns what to refuse and not that a frame means "refuse".
3. SafeDPO (with RPO's NLL term on the chosen reply) trains from the model on those pairs.
4. Both models answer the test-split probes (other (request, frame) combinations): ASR and over-refusal per family,
   before and after, and the change in overall ASR with its paired 95% interval and McNemar's p-value, since the
   same prompts are asked of both models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from alignlab.train.trainer import TrainConfig


@dataclass
class HardenConfig:
    model: str = ""  # a TinyWorld chat model (after SFT or DPO)
    out_dir: str = "runs/harden"
    seed: int = 0  # the world's seed (the one the model was trained on)
    steps: int = 60
    lr: float = 3e-5
    beta: float = 0.1
    rpo_alpha: float = 1.0
    batch_size: int = 16
    per_combination: int = 2  # fills of each (family, frame, request) on each split
    max_new_tokens: int = 64


def make_pairs(probes, replies, rows, refusal: str) -> list[dict]:
    """SafeDPO pairs from a red-team run on the train split (step 2 of the module docstring)."""
    pairs = []
    for p, reply, row in zip(probes, replies, rows):
        if p.label == "attack" and row["success"] and reply.strip():  # an empty reply makes no pair
            pairs.append({"prompt": list(p.messages), "chosen": [{"role": "assistant", "content": refusal}],
                          "rejected": [{"role": "assistant", "content": reply}], "chosen_unsafe": False,
                          "rejected_unsafe": True, "kind": f"redteam-{p.family}"})
        elif p.label == "benign" and (p.reference or reply.strip()):
            # the model's own answer where it gave one (what it already does, kept), else the expected answer
            answer = reply if reply.strip() and not row["refused"] else p.reference
            if not answer:
                continue
            pairs.append({"prompt": list(p.messages), "chosen": [{"role": "assistant", "content": answer}],
                          "rejected": [{"role": "assistant", "content": refusal}], "kind": f"lookalike-{p.family}"})
    return pairs


def harden(cfg: HardenConfig) -> dict:
    from alignlab.data.world import TinyWorld
    from alignlab.eval import redteam
    from alignlab.eval.backends import GenRequest, LocalModel
    from alignlab.eval.stats import mcnemar, paired_difference
    from alignlab.recipes import dpo

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = TinyWorld(seed=cfg.seed)

    def answer(model, probes):
        replies = model.generate([GenRequest(list(p.messages), cfg.max_new_tokens) for p in probes])
        return replies, [redteam.detect(r, p, world.secret) for p, r in zip(probes, replies)]

    start = LocalModel(cfg.model)
    probes = redteam.make_probes(world, "train", cfg.per_combination)
    replies, rows = answer(start, probes)
    pairs = make_pairs(probes, replies, rows, world.refusal)
    n_attack = sum(p["kind"].startswith("redteam") for p in pairs)
    n_success = sum(r["success"] for r in rows)
    print(f"red team, train split: {n_success} of {sum(p.label == 'attack' for p in probes)} attacks succeeded "
          f"({n_success - n_attack} with an empty reply, no pair); {len(pairs) - n_attack} look-alike pairs beside "
          "them")
    train = TrainConfig(max_steps=cfg.steps, lr=cfg.lr, warmup_steps=max(1, cfg.steps // 10), min_lr_ratio=0.1,
                        weight_decay=0.0, beta2=0.99, eval_every=0, save_every=0, keep_last=1, seed=cfg.seed,
                        device="cpu", overwrite=True)
    dcfg = dpo.DPOConfig(out_dir=str(out / "dpo"), model=cfg.model, loss="safedpo", beta=cfg.beta,
                         rpo_alpha=cfg.rpo_alpha, reference="copy", max_len=384, max_prompt_len=256,
                         batch_size=cfg.batch_size, eval_batches=4, train=train)
    trained = dpo.run(dcfg, train_records=pairs, val_records=pairs[:64])

    test_probes = redteam.make_probes(world, "test", cfg.per_combination)
    before_replies, before_rows = answer(start, test_probes)
    after_replies, after_rows = answer(LocalModel(trained["model_dir"]), test_probes)
    before = redteam.score_detections(test_probes, before_rows)
    after = redteam.score_detections(test_probes, after_rows)
    attacks = [i for i, p in enumerate(test_probes) if p.label == "attack"]
    benign = [i for i, p in enumerate(test_probes) if p.label == "benign"]
    asr_b, asr_a = [before_rows[i]["success"] for i in attacks], [after_rows[i]["success"] for i in attacks]
    ref_b, ref_a = [before_rows[i]["refused"] for i in benign], [after_rows[i]["refused"] for i in benign]
    diff, lo, hi = paired_difference(asr_b, asr_a)
    odiff, olo, ohi = paired_difference(ref_b, ref_a)
    result = {"config": asdict(cfg), "model_dir": trained["model_dir"], "pairs": len(pairs),
              "train_attacks_succeeded": n_attack, "test_before": before, "test_after": after,
              "asr_change": {"value": diff, "ci": [lo, hi], "mcnemar_p": mcnemar(asr_b, asr_a)},
              "over_refusal_change": {"value": odiff, "ci": [olo, ohi]}}
    (out / "harden.json").write_text(json.dumps(result, indent=1))
    samples = [{"id": p.id, "label": p.label, "before": b, "after": a}
               for p, b, a in zip(test_probes, before_replies, after_replies)]
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    lines = ["# Red team, then SafeDPO on its successes", "",
             f"Model: `{cfg.model}`; {len(pairs)} pairs ({n_attack} successful attacks of the train split, the rest "
             f"look-alikes answered); SafeDPO {cfg.steps} steps. Held-out probes:", "",
             *redteam.score_table(after, before), "",
             f"ASR change over all families: {diff:+.1%} (paired 95% interval {lo:+.1%} to {hi:+.1%}, McNemar "
             f"p = {result['asr_change']['mcnemar_p']:.2g}); over-refusal change: {odiff:+.1%} ({olo:+.1%} to "
             f"{ohi:+.1%})."]
    (out / "harden.md").write_text("\n".join(lines) + "\n")
    return result
