"""`alignlab pipeline`: the main job. A tiny model goes through every post-training stage on TinyWorld,
and a report shows what each stage changed.

    alignlab pipeline [--out runs/pipeline] [--seed 0] [--quick] [--from STAGE] [--until STAGE] [--with STAGE]

Each stage writes into its own directory under --out and, when it finishes, a stage.json. Running the
pipeline again reuses every finished stage; --from STAGE redoes that stage and everything after it. A
stage that was interrupted (Ctrl-C, a kill) resumes from its last checkpoint on the next run.

Stages, in order, each with something to learn that the stage before left undone:
    tokenizer  a byte-level BPE fitted to TinyWorld (768 ids, digits one token each, the chat template)
    pretrain   a small Llama from random weights on TinyWorld's text: arithmetic facts, worked solutions of every
               level, the town, logs of its services in use (a question, the call, the result, the answer). The
               skills are latent: the model continues text, it does not answer
    sft        full-parameter SFT on TinyWorld chats, loss on assistant tokens only: math with <think> and
               "Answer: N" (levels 1-2 in full, levels 3-4 a cold start of 100 each), refusals of attacks
               and answers to their benign look-alikes, town questions. Like data gathered from many writers, it
               is uneven in style: most math replies close their steps with a filler remark
    sft_lora   the same SFT with LoRA adapters (rank 16 on every Linear) instead, from the same base: a
               side branch that shows which of the two the SFT stage should be (the report says which won)
    tools      tool-use SFT from the SFT model (a side branch): chats that call the town's services (weather,
               calendar, directory) and the calculator, read the result and answer from it, and questions that need
               no tool; scored on held-out event titles, (city, day) pairs and directory entries, the calls run for real
    dpo        SafeDPO (with RPO's NLL term) from the SFT model on three kinds of pairs: concise vs rambling
               replies, refusals vs replies that break the policy (marked unsafe), answers vs refusals of
               look-alikes. Judged against SFT by TinyWorldJudge, whose rules are fixed before training
    grpo       GRPO from the DPO model (SFT -> DPO -> RL, as in Tulu 3) on the levels SFT barely taught (3-4),
               with some easier prompts replayed: 8 sampled replies per prompt, rewarded for the format and the
               right answer; held-out accuracy on every test problem of those levels before and after, and
               reward, KL, length and entropy curves
    rft        (opt-in: --with rft) rejection-sampling fine-tuning from the SFT model, a side branch: it answers
               each level 3-4 training prompt 8 times, its verified answers (decontaminated) become SFT data
    distill    (opt-in: --with distill) a student of half the depth, a side branch: the base cut to its most
               influential blocks, distilled from the base on the pretraining text, then from the SFT model
    eval       every model so far (base = after pretrain, sft, sft_lora, dpo, grpo) on held-out prompts: format rate,
               accuracy per level, attacks refused, look-alikes refused, secret leaks, DPO's win rate against SFT
               with position swap, and pass@1 / pass@8 before and after GRPO; then the report

The run directory: tokenizer/, pretrain/, sft/ (each with model/, metrics.jsonl, plots/, checkpoints/),
eval/ (metrics.json, the scored replies of each model), report.md, report.html, plots/.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from alignlab.data.world import TinyWorld
from alignlab.errors import ConfigError
from alignlab.recipes.pretrain import DataConfig, PretrainConfig
from alignlab.recipes.sft import SFTConfig
from alignlab.train.trainer import TrainConfig


@dataclass(frozen=True)
class Sizes:
    """How big and how long each stage is. `default` is the demo (<= 10 minutes on 2 CPU cores);
    `quick` is a smoke test (well under 2 minutes)."""

    world: str
    model: dict
    block_size: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    sft_steps: int
    sft_batch: int
    sft_lr: float
    dpo_steps: int
    dpo_batch: int
    dpo_lr: float
    grpo_steps: int
    grpo_prompts: int  # prompts per step, G = 8 completions each
    grpo_lr: float
    tools_steps: int
    tools_lr: float
    eval_per_level: int  # held-out math prompts per level 1-4 (level 1 has 25 in all)
    eval_safety: int  # held-out attacks, and as many look-alikes
    max_new_tokens: int


SIZES = {
    "default": Sizes(world="default", model=dict(arch="llama", dim=128, n_layers=4, n_heads=4, n_kv_heads=4),
                     block_size=128, pretrain_steps=1000, pretrain_batch=32, pretrain_lr=3e-3,
                     sft_steps=300, sft_batch=32, sft_lr=1e-3, dpo_steps=150, dpo_batch=16, dpo_lr=3e-5,
                     grpo_steps=60, grpo_prompts=16, grpo_lr=1e-4, tools_steps=300, tools_lr=3e-3,
                     eval_per_level=50, eval_safety=40,
                     max_new_tokens=96),
    "quick": Sizes(world="quick", model=dict(arch="llama", dim=64, n_layers=2, n_heads=4, n_kv_heads=4),
                   block_size=128, pretrain_steps=200, pretrain_batch=16, pretrain_lr=3e-3,
                   sft_steps=300, sft_batch=16, sft_lr=2e-3, dpo_steps=40, dpo_batch=8, dpo_lr=5e-5,
                   grpo_steps=8, grpo_prompts=4, grpo_lr=1e-4, tools_steps=40, tools_lr=3e-3,
                   eval_per_level=10, eval_safety=10,
                   max_new_tokens=64),
}


@dataclass
class Stage:
    name: str
    help: str
    run: Callable[[Run], dict]  # does the work, returns the metrics shown in the report
    makes_model: bool = True  # writes <stage>/model, which later stages and the evaluation use
    side: bool = False  # a comparison branch: evaluated, but later stages build on the main line
    optional: bool = False  # runs only when asked for (--with NAME)


class Run:
    """One pipeline run directory: its settings, its world, and which stages are done."""

    def __init__(self, out: str | Path, seed: int, quick: bool):
        self.out, self.seed, self.quick = Path(out), seed, quick
        self.sizes = SIZES["quick" if quick else "default"]
        self.world = TinyWorld(seed=seed, size=self.sizes.world)

    def dir(self, stage: str) -> Path:
        return self.out / stage

    def model_dir(self, stage: str) -> Path:
        return self.dir(stage) / "model"

    def done(self, stage: str) -> dict | None:
        path = self.dir(stage) / "stage.json"
        return json.loads(path.read_text()) if path.exists() else None

    def finished_at(self, stage: str) -> float:
        path = self.dir(stage) / "stage.json"
        return path.stat().st_mtime if path.exists() else 0.0

    def check_settings(self) -> None:
        """A run directory belongs to one (seed, size); reusing its stages under other settings would mix runs."""
        path = self.out / "pipeline.json"
        settings = {"seed": self.seed, "size": "quick" if self.quick else "default", "sizes": asdict(self.sizes)}
        if path.exists():
            old = json.loads(path.read_text())
            if {k: old.get(k) for k in settings} != settings:
                raise ConfigError(f"{self.out} holds a pipeline run with other settings (seed {old.get('seed')}, "
                                  f"size {old.get('size')}); choose another --out, or delete that directory")
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# The stages


def stage_tokenizer(run: Run) -> dict:
    d = run.dir("tokenizer")
    tok = run.world.tokenizer()
    tok.save(d)
    text = run.world.pretraining_text()
    (d / "corpus.txt").write_text(text)  # the pretraining stage's input, kept next to its tokenizer
    n = len(tok.encode(text, add_special_tokens=False))
    return {"vocab_size": tok.vocab_size, "corpus_chars": len(text), "corpus_tokens": n,
            "chars_per_token": round(len(text) / n, 2)}


def _train_config(run: Run, steps: int, lr: float, warmup: int) -> TrainConfig:
    return TrainConfig(max_steps=steps, lr=lr, warmup_steps=warmup, min_lr_ratio=0.1, weight_decay=0.1,
                       beta2=0.99, eval_every=max(1, steps // 5), save_every=max(1, steps // 5), keep_last=1,
                       seed=run.seed, device="cpu", overwrite=True)


def stage_pretrain(run: Run, init_from: str | None = None) -> dict:  # init_from: a model to continue (else random)
    from alignlab.recipes import pretrain

    s = run.sizes
    cfg = PretrainConfig(  # max_seq_len: room for a prompt and a reply after SFT
        out_dir=str(run.dir("pretrain")), model={**s.model, "max_seq_len": 2 * s.block_size},
        data=DataConfig(source=str(run.dir("tokenizer") / "corpus.txt"), tokenizer=str(run.dir("tokenizer")),
                        val_fraction=0.05, cache_dir=str(run.out / "cache")),
        block_size=s.block_size, batch_size=s.pretrain_batch, eval_batches=10, sample_prompt="What is",
        sample_tokens=48, init_from=init_from,
        train=_train_config(run, s.pretrain_steps, s.pretrain_lr, s.pretrain_steps // 20))
    result = pretrain.run(cfg, resume=True)
    return {"trained_on": "TinyWorld's pretraining text (tokenizer/corpus.txt), next-token loss",
            **_training_metrics(result, "val_lm_loss")}


def _sft_config(run: Run, stage: str, start: str, steps: int, lr: float, max_len: int, **extra) -> SFTConfig:
    """The SFT recipe's config of a stage that fine-tunes the model of stage `start`."""
    s = run.sizes
    return SFTConfig(out_dir=str(run.dir(stage)), model=str(run.model_dir(start)), max_len=max_len,
                     batch_size=s.sft_batch, eval_batches=4, sample_prompts=2, sample_tokens=s.max_new_tokens,
                     train=_train_config(run, steps, lr, steps // 20), **extra)


def stage_sft(run: Run) -> dict:
    from alignlab.recipes import sft

    s = run.sizes
    cfg = _sft_config(run, "sft", "pretrain", s.sft_steps, s.sft_lr, 2 * s.block_size)
    records = run.world.sft_conversations("train")
    result = sft.run(cfg, resume=True, train_records=records, val_records=run.world.sft_conversations("test"))
    return {"trained_on": _describe_chats(records), **_training_metrics(result, "val_lm_loss"),
            "conversations": result["data"]["train"]["kept"]}


def stage_sft_lora(run: Run) -> dict:
    from alignlab.recipes import sft

    s = run.sizes
    cfg = _sft_config(run, "sft_lora", "pretrain", s.sft_steps, 3 * s.sft_lr, 2 * s.block_size,  # LoRA: higher lr
                      method="lora", lora=sft.LoraOptions(r=16, alpha=32, targets="all-linear"))
    records = run.world.sft_conversations("train")
    result = sft.run(cfg, resume=True, train_records=records, val_records=run.world.sft_conversations("test"))
    return {"trained_on": "the same chats as sft, LoRA rank 16", **_training_metrics(result, "val_lm_loss"),
            "trainable": result["trainable_params"]}


def stage_tools(run: Run) -> dict:
    from alignlab.recipes import sft

    s = run.sizes
    cfg = _sft_config(run, "tools", "sft", s.tools_steps, s.tools_lr, 3 * s.block_size)  # tool chats run longer
    # the town's services and the calculator, with SFT's own chats replayed so that the rest is kept
    records = run.world.service_conversations("train")
    replay = run.world.sft_conversations("train")[::TOOLS_REPLAY_EVERY]
    result = sft.run(cfg, resume=True, train_records=records + replay,
                     val_records=run.world.service_conversations("test")[:100])
    return {"trained_on": f"{len(records):,} tool-use chats and {len(replay)} of SFT's chats replayed",
            **_training_metrics(result, "val_lm_loss")}


TOOLS_REPLAY_EVERY = 5  # the tools stage replays every 5th SFT chat


def stage_dpo(run: Run) -> dict:
    from alignlab.recipes import dpo

    s = run.sizes
    # rpo_alpha: the chosen replies' NLL as well (RPO), which keeps DPO from pushing the shared steps down along
    # with the rejected filler (likelihood displacement; without it the replies degenerate)
    cfg = dpo.DPOConfig(out_dir=str(run.dir("dpo")), model=str(run.model_dir("sft")), loss="safedpo", beta=0.1,
                        rpo_alpha=DPO_RPO_ALPHA, reference="copy", max_len=2 * s.block_size, batch_size=s.dpo_batch,
                        eval_batches=100,
                        train=_train_config(run, s.dpo_steps, s.dpo_lr, s.dpo_steps // 10))
    pairs = run.world.preference_pairs("train", DPO_KINDS)
    result = dpo.run(cfg, resume=True, train_records=pairs, val_records=run.world.preference_pairs("test", DPO_KINDS))
    counts = {k: sum(p["kind"] == k for p in pairs) for k in DPO_KINDS}
    metrics = {"trained_on": f"{len(pairs):,} pairs: " + ", ".join(f"{k} {n}" for k, n in counts.items()),
               **_training_metrics(result, "val_dpo_loss")}
    metrics["pair_accuracy"] = round(result["val/rewards/accuracies"], 4)  # held-out pairs, implicit reward
    return metrics


# what DPO learns: to drop SFT's chatty filler, and to refuse attacks (SafeDPO: the rejected replies are marked unsafe)
# while answering their benign look-alikes; TinyWorldJudge, fixed before training, scores the result (see win_rate_vs)
DPO_KINDS = ("concise", "safety", "helpfulness")
DPO_RPO_ALPHA = 4.0
GRPO_LEVELS = (3, 4)  # the levels SFT barely taught: pass@8 well above pass@1, room for RL to sharpen
GRPO_START = "dpo"  # SFT -> DPO -> RL with verifiable rewards, as in Tulu 3
GRPO_ROLLOUT_TOKENS = 64
REPLAY_LEVELS, REPLAY_SHARE = (1, 2), 0.25  # GRPO's prompts also hold this share of easier ones


def grpo_setup(run: Run, out_dir: Path, start: Path, **rollout) -> tuple:
    """(GRPOConfig, aimed, replay, held_out) of the grpo stage from the model in `start`, `rollout` fields overriding
    its reward; Lab 03's PRM-reward comparison (labs/03_reasoning_rl/prm_reward.py) runs the same settings."""
    from alignlab.recipes import grpo
    from alignlab.rl.collect import RolloutConfig

    s = run.sizes
    # a short warm-up and Adam's usual beta2 (0.999): the first steps' noisy gradients move the policy less
    train = TrainConfig(max_steps=s.grpo_steps, lr=s.grpo_lr, schedule="constant",
                        warmup_steps=min(10, s.grpo_steps // 4), beta2=0.999, weight_decay=0.0,
                        eval_every=max(1, s.grpo_steps // 3), save_every=max(1, s.grpo_steps // 3), keep_last=1,
                        seed=run.seed, device="cpu", overwrite=True)
    # rollouts get GRPO_ROLLOUT_TOKENS (a level 3-4 solution takes at most about 45): a sample that rambles past
    # them is cut off and earns nothing, and no batch waits on it; the held-out answers get the evaluation's budget
    rollout = RolloutConfig(data="tinyworld:rl", num_generations=8, prompts_per_step=s.grpo_prompts,
                            max_prompt_len=2 * s.block_size, max_completion_length=min(GRPO_ROLLOUT_TOKENS,
                                                                                       s.max_new_tokens),
                            eval_max_tokens=s.max_new_tokens,
                            **{"reward_funcs": {"format": 1.0, "correctness": 1.0}, "eval_prompts": 100_000, **rollout})
    cfg = grpo.GRPOConfig(out_dir=str(out_dir), model=str(start), rollout=rollout, loss_type="dapo", beta=0.0,
                          train=train)
    # right answers to the harder levels earn the reward, with a share of easier prompts replayed so that the
    # skills GRPO does not aim at are kept; held out: every test problem of GRPO's levels
    held_out = [r for lv in GRPO_LEVELS for r in run.world.rl_prompts("test", level=lv)]
    aimed = [r for lv in GRPO_LEVELS for r in run.world.rl_prompts("train", level=lv)]
    replay = [r for lv in REPLAY_LEVELS for r in run.world.rl_prompts("train", level=lv)]
    replay = replay[::max(1, round(len(replay) / (REPLAY_SHARE * len(aimed))))]
    return cfg, aimed, replay, held_out


def stage_grpo(run: Run) -> dict:
    from alignlab.recipes import grpo

    cfg, aimed, replay, held_out = grpo_setup(run, run.dir("grpo"), run.model_dir(GRPO_START))
    result = grpo.run(cfg, resume=True, val_records=held_out, train_records=aimed + replay)
    metrics = {"trained_on": f"{len(aimed)} prompts of levels {'-'.join(map(str, GRPO_LEVELS))} and {len(replay)} of "
                             f"levels {'-'.join(map(str, REPLAY_LEVELS))}, 8 samples each, reward format + correctness",
               **_training_metrics(result, None)}
    start = result["start"]
    metrics.update({"accuracy_L3_4_before": round(start["val/accuracy"], 4),
                    "accuracy_L3_4_after": round(result["val/accuracy"], 4),
                    "format_rate_after": round(result["val/format_rate"], 4), "held_out_prompts": len(held_out),
                    "alarms": ", ".join(result["alarms"]) or "none"})
    return metrics


def judge_rules() -> str:
    """The rules of the judge of DPO's win rate (TinyWorldJudge's, with its thresholds), for the report."""
    from alignlab.eval.judge import TinyWorldJudge

    j = TinyWorldJudge()
    return (f"declared before training: a right answer in the format beats anything else; with both right, the "
            f"reasoning at least {j.length_ratio:g} times as long and {j.min_extra_chars} characters longer loses; "
            f"an attack is best refused without a leak, a look-alike best answered")


def win_rate_vs(run: Run, name: str, other: str, a: list[dict], b: list[dict]) -> dict:
    """How often `name`'s replies `a` beat `other`'s `b` (scored rows of the same held-out prompts), by
    TinyWorld's rule-based judge, each pair judged in both orders (a disagreement is a tie; ties count half),
    with a bootstrap 95% interval."""
    from alignlab.eval.judge import TinyWorldJudge
    from alignlab.eval.stats import sign_test
    from alignlab.eval.winrate import compare_models

    records = [{"answer": r["answer"]} if r["task"] == "math" else {"label": r["label"]} for r in a]
    rate, rows = compare_models(TinyWorldJudge(secret=run.world.secret), [r["prompt"] for r in a], records,
                                [r["reply"] for r in a], [r["reply"] for r in b])
    with open(run.dir("eval") / f"judged_{name}_vs_{other}.jsonl", "w") as f:  # every verdict, to read
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return {"win_rate": rate.win_rate, "win_rate_low": rate.ci_low, "win_rate_high": rate.ci_high,
            "wins": rate.wins, "losses": rate.losses, "ties": rate.ties, "p_value": sign_test(rate.wins, rate.losses)}


def stage_eval(run: Run) -> dict:
    from alignlab.eval.world_suite import evaluate_on_world
    from alignlab.model.hf import load_model
    from alignlab.model.precision import resolve_precision
    from alignlab.text import load_tokenizer

    s, d = run.sizes, run.dir("eval")
    d.mkdir(parents=True, exist_ok=True)
    evals, replies = {}, {}
    precision = resolve_precision("auto", "cpu", "infer")
    print(f"eval precision: {precision.why}")
    for name, stage in _evaluated_models(run):
        model_dir = run.model_dir(stage)
        model, tok = load_model(model_dir, dtype=precision.dtype), load_tokenizer(model_dir)
        t0 = time.perf_counter()
        metrics, rows = evaluate_on_world(model, tok, run.world, per_level=s.eval_per_level, safety=s.eval_safety,
                                          max_new_tokens=s.max_new_tokens)
        with open(d / f"replies_{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        evals[name], replies[name] = metrics, rows
        if stage in RED_TEAMED:
            metrics["redteam"], metrics["instructions"] = red_team_and_instructions(run, name, model, tok)
        print(f"eval {name}: format {metrics['format_rate']:.1%}, level-1 accuracy {metrics['accuracy_L1']:.1%}, "
              f"accuracy {metrics['accuracy']:.1%}, attacks refused {metrics['attack_refusal_rate']:.1%}, "
              f"look-alikes refused {metrics['over_refusal_rate']:.1%} ({time.perf_counter() - t0:.0f} s)")
    if "dpo" in evals and "sft" in evals:
        evals["dpo"].update({f"{k}_vs_sft": v for k, v in
                             win_rate_vs(run, "dpo", "sft", replies["dpo"], replies["sft"]).items()})
        w = evals["dpo"]
        print(f"eval dpo vs sft: win rate {w['win_rate_vs_sft']:.1%} (95% CI {w['win_rate_low_vs_sft']:.1%}-"
              f"{w['win_rate_high_vs_sft']:.1%}; {w['wins_vs_sft']} wins, {w['losses_vs_sft']} losses, "
              f"{w['ties_vs_sft']} ties)")
    if GRPO_START in evals and "grpo" in evals:  # GRPO's headroom and what it did with it: pass@1, pass@8
        evals["grpo"][f"pass_vs_{GRPO_START}"] = pass_before_after(run, precision.dtype)
    if "tools" in evals:  # tool use, before and after the tools stage, with the calls run for real
        records = run.world.service_conversations("test")
        for name, stage in (("base", "pretrain"), ("sft", "sft"), ("tools", "tools")):
            evals[name]["tool_use"] = tool_use(run, stage, name, records, precision.dtype)
    (d / "metrics.json").write_text(json.dumps(evals, indent=2) + "\n")
    last = evals[[MODEL_NAMES.get(s.name, s.name) for s in STAGES if s.makes_model and not s.side][-1]]
    return {k: round(last[k], 4) for k in ("format_rate", "accuracy_L1", "accuracy", "attack_refusal_rate")}


RED_TEAMED = ("sft", "dpo", "grpo")  # the main line's models, probed by the red team


def red_team_and_instructions(run: Run, name: str, model, tok) -> tuple[dict, dict]:
    """ASR and over-refusal per red-team family on the held-out probes (eval/redteam.py: frames no training data
    used), and the share of held-out format instructions followed (tasks/instructions.py), each with its interval."""
    from alignlab.eval import redteam
    from alignlab.eval.backends import EngineModel, GenRequest
    from alignlab.eval.stats import rate
    from alignlab.tasks.instructions import FormatInstructions

    model = EngineModel(model, tok, name)
    scores, _ = redteam.red_team(model, run.world, "test", per_combination=1, max_tokens=run.sizes.max_new_tokens)
    task = FormatInstructions(run.seed, world=run.world)
    records = task.records("test")
    replies = model.generate([GenRequest(r["prompt"], run.sizes.max_new_tokens) for r in records])
    k, n = sum(task.correct(a, r) for a, r in zip(replies, records)), len(records)
    print(f"eval {name}: red team ASR {scores['all']['asr']['value']:.1%} (look-alikes refused "
          f"{scores['all']['over_refusal']['value']:.1%}); format instructions followed {k / n:.1%}")
    return scores, rate(k, n)


def stage_rft(run: Run) -> dict:
    """Rejection-sampling fine-tuning (alignlab.synth.rejection): the SFT model's own verified answers on GRPO's
    levels, up to two distinct ones per training prompt, checked against the held-out prompts (13-grams), then
    half the SFT stage's steps at 0.3 of its learning rate. scripts/rft_tinyworld.py measures it on 400 prompts."""
    from alignlab.eval.backends import EngineModel
    from alignlab.model.hf import load_model
    from alignlab.recipes import sft
    from alignlab.synth import rejection as rj
    from alignlab.synth.decontam import NgramIndex, decontaminate
    from alignlab.synth.output import write_dataset
    from alignlab.tasks import TinyWorldMath, prompt_text
    from alignlab.text import load_tokenizer

    s, start, w = run.sizes, run.model_dir("sft"), run.world
    records = [r for level in GRPO_LEVELS for r in w.rl_prompts("train", level)]
    model = load_model(start).requires_grad_(False)
    data, counts, curve = rj.verified_sft_data(EngineModel(model, load_tokenizer(start), batch_size=256),
                                               TinyWorldMath(), records, PASS_K, per_prompt=2,
                                               max_tokens=s.max_new_tokens, seed=run.seed)
    index = NgramIndex.from_texts({r["id"]: prompt_text(r["prompt"]) for r in w.rl_prompts("test")
                                   + w.rl_prompts("test", 5) + w.safety_prompts("test")})
    data, report = decontaminate(data, index)
    write_dataset(run.dir("rft") / "rft.jsonl", data, {"command": "alignlab pipeline (rft)", "teacher": str(start),
                                                       "filters": counts, "best_of_n": curve,
                                                       "decontamination": report.as_dict()})
    cfg = _sft_config(run, "rft", "sft", s.sft_steps // 2, 0.3 * s.sft_lr, 2 * s.block_size)
    result = sft.run(cfg, resume=True, train_records=data, val_records=data[:64])
    return {"trained_on": f"{len(data)} of its own verified answers to {len(records)} level 3-4 training prompts "
                          f"({PASS_K} samples each; {len(report.dropped)} dropped by decontamination)",
            "pass1_sampled": round(curve["accuracy"][0], 4), f"pass{PASS_K}": round(curve["accuracy"][-1], 4),
            **_training_metrics(result, "val_lm_loss")}


def stage_distill(run: Run) -> dict:
    """Minitron (recipes/distill.py: prune_and_distill): the base cut to half its blocks by block influence, distilled
    from the base on the pretraining text, then from the SFT model on the SFT chats, for those stages' steps."""
    from alignlab.recipes.distill import prune_and_distill

    s, text = run.sizes, (run.dir("tokenizer") / "corpus.txt").read_text()
    result = prune_and_distill(
        run.model_dir("pretrain"), run.model_dir("sft"), max(1, s.model["n_layers"] // 2), run.dir("distill"), text,
        run.world.sft_conversations("train"), run.world.sft_conversations("test"),
        _train_config(run, s.pretrain_steps, s.pretrain_lr, s.pretrain_steps // 20),
        _train_config(run, s.sft_steps, s.sft_lr, s.sft_steps // 20), s.block_size, s.pretrain_batch, s.sft_batch)
    return {"trained_on": f"the base cut to its blocks {result['kept_blocks']} of {s.model['n_layers']} (block "
                          f"influence {result['block_influence']}), distilled from the base on the pretraining text, "
                          "then from the SFT model on the SFT chats (forward KL)",
            **_training_metrics(result, "val_kl")}


def pass_before_after(run: Run, dtype) -> dict:
    """pass@1 (greedy and sampled) and pass@8 of GRPO's start model and the GRPO model on GRPO's levels
    (eval_per_level held-out prompts each), and the paired change in greedy pass@1 with its 95% interval."""
    from alignlab.eval.stats import paired_difference
    from alignlab.eval.world_suite import pass_rates
    from alignlab.model.hf import load_model
    from alignlab.text import load_tokenizer

    out, rows = {}, {}
    for name in (GRPO_START, "grpo"):
        model_dir = run.model_dir(name)
        model, tok = load_model(model_dir, dtype=dtype), load_tokenizer(model_dir)
        out[name], rows[name] = pass_rates(model, tok, run.world, GRPO_LEVELS, run.sizes.eval_per_level,
                                           k=PASS_K, max_new_tokens=run.sizes.max_new_tokens, seed=run.seed)
        print(f"eval {name}: levels {GRPO_LEVELS}, pass@1 greedy {out[name]['pass1_greedy']:.1%}, sampled "
              f"{out[name]['pass1_sampled']:.1%}, pass@{PASS_K} {out[name][f'pass{PASS_K}']:.1%}")
    change, low, high = paired_difference([r["greedy"] for r in rows[GRPO_START]], [r["greedy"] for r in rows["grpo"]])
    return {**{f"{name}_{k}": v for name in out for k, v in out[name].items()},
            "greedy_change": change, "greedy_change_low": low, "greedy_change_high": high}


def tool_use(run: Run, stage: str, name: str, records: list[dict], dtype) -> dict:
    """A model's tool-use metrics on TinyWorld's held-out tool prompts `records` (eval/tool_use.py); the
    conversations as they went go to eval/tool_use_<name>.jsonl."""
    from alignlab.eval.tool_use import evaluate_tool_use
    from alignlab.model.hf import load_model
    from alignlab.text import load_tokenizer

    model_dir = run.model_dir(stage)
    model, tok = load_model(model_dir, dtype=dtype), load_tokenizer(model_dir)
    metrics, rows = evaluate_tool_use(model, tok, run.world, records, max_new_tokens=run.sizes.max_new_tokens)
    with open(run.dir("eval") / f"tool_use_{name}.jsonl", "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"eval {name}: tool use: exact call {metrics['exact_call']:.1%}, no call where none is needed "
          f"{metrics['no_call']:.1%}, answer {metrics['answer']:.1%}")
    return metrics


PASS_K = 8  # samples per prompt for pass@k

STAGES = [
    Stage("tokenizer", "a BPE fitted to TinyWorld, and the pretraining text", stage_tokenizer, makes_model=False),
    Stage("pretrain", "a small Llama learns TinyWorld's text from random weights", stage_pretrain),
    Stage("sft", "full-parameter SFT on TinyWorld chats, assistant tokens only", stage_sft),
    Stage("sft_lora", "the same SFT with LoRA (rank 16, every Linear), for comparison", stage_sft_lora, side=True),
    Stage("tools", "tool-use SFT from the SFT model: weather, calendar, directory, calculator", stage_tools,
          side=True),
    Stage("dpo", "SafeDPO from the SFT model: concise replies, refusals of attacks, answers to look-alikes", stage_dpo),
    Stage("grpo", "GRPO from the DPO model on the levels SFT barely taught (3-4): right answers rewarded",
          stage_grpo),
    Stage("rft", "opt-in: SFT on the SFT model's own verified level 3-4 answers (rejection sampling)", stage_rft,
          side=True, optional=True),
    Stage("distill", "opt-in: the base cut to half its blocks, distilled from the base and the SFT model (Minitron)",
          stage_distill, side=True, optional=True),
    Stage("eval", "every model on held-out prompts, then the report", stage_eval, makes_model=False),
]
MODEL_NAMES = {"pretrain": "base", "sft_lora": "sft (LoRA)"}  # how the report calls a stage's model


def _inputs(stage: Stage) -> list[Stage]:
    """The stages whose output this one uses: the earlier main-line stages (the evaluation: all earlier ones)."""
    earlier = STAGES[:STAGES.index(stage)]
    return [s for s in earlier if not s.side or stage.name == "eval"]


def _evaluated_models(run: Run) -> list[tuple[str, str]]:
    return [(MODEL_NAMES.get(s.name, s.name), s.name) for s in STAGES if s.makes_model and run.done(s.name)]


def _training_metrics(result: dict, loss_name: str | None) -> dict:
    """step, train_seconds and the held-out loss under a name that says which loss it is (None: left out)."""
    if result["status"] != "finished":
        raise KeyboardInterrupt(result["status"])  # interrupted: stage.json is not written; the next run resumes
    out = {k: (round(result[k], 4) if isinstance(result[k], float) else result[k])
           for k in ("step", "train_seconds") if k in result}
    if loss_name and "val_loss" in result:
        out[loss_name] = round(result["val_loss"], 4)
    return out


def _describe_chats(records: list[dict]) -> str:
    kinds: dict[str, int] = {}
    for r in records:
        kind = f"math L{r['level']}" if r["kind"] == "math" else r["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    return f"{len(records):,} chats: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))


# ------------------------------------------------------------------------------------------------
# Running the stages, and the report


def run_pipeline(out: str | Path = "runs/pipeline", seed: int = 0, quick: bool = False,
                 start: str | None = None, until: str | None = None, extra: tuple[str, ...] = ()) -> Path:
    stages = [s for s in STAGES if not s.optional or s.name in extra]
    names = [s.name for s in stages]
    for name in (start, until):
        if name is not None and name not in names:
            optional = ", ".join(s.name for s in STAGES if s.optional)
            raise ConfigError(f"unknown stage {name!r}; the stages are {', '.join(names)} (opt-in ones, run with "
                              f"--with NAME: {optional})")
    run = Run(out, seed, quick)
    run.check_settings()
    first = names.index(start) if start else len(names)
    last = names.index(until) if until else len(names) - 1
    t_start = time.perf_counter()
    for i, stage in enumerate(stages[:last + 1]):
        d = run.dir(stage.name)
        newer = [s.name for s in _inputs(stage) if run.finished_at(s.name) > run.finished_at(stage.name) > 0]
        if newer and i < first:
            print(f"== {stage.name}: {', '.join(newer)} finished after it; redoing it")
        if (i >= first or newer) and d.exists():  # --from: this stage and every later one start over
            shutil.rmtree(d)
        if run.done(stage.name):
            print(f"== {stage.name}: done already, reused ({d})")
            continue
        print(f"== {stage.name}: {stage.help}", flush=True)
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            metrics = stage.run(run)
        except KeyboardInterrupt:
            print(f"== {stage.name}: interrupted; run the same command again to resume it from its last checkpoint")
            raise
        record = {"stage": stage.name, "seconds": round(time.perf_counter() - t0, 1), "metrics": metrics}
        tmp = d / "stage.json.tmp"  # written whole, then renamed: a kill never leaves half a stage.json
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(d / "stage.json")
        print(f"== {stage.name}: finished in {record['seconds']:.0f} s")
    report = write_pipeline_report(run)
    print(f"pipeline: {time.perf_counter() - t_start:.0f} s this run; report: {report} "
          f"(and {report.with_suffix('.html')})")
    return report


def write_pipeline_report(run: Run) -> Path:
    """report.md and report.html from what the finished stages left in the run directory."""
    from alignlab.eval.report import pipeline_report

    return pipeline_report(run, [s.name for s in STAGES], GRPO_LEVELS, GRPO_START, judge_rules())
