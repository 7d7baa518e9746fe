"""Agent RL: trajectory-group GRPO on multi-turn environments (tic-tac-toe, guess the number, TinyWorld's tools).

    alignlab agent-rl env=tictactoe model=runs/ttt/sft/model out_dir=runs/ttt/rl [key=value ...] [--resume]

The study guide's multi-turn recipe (OpenPipe ART's tic-tac-toe notebook): the policy plays whole games and learns
from how each game ended. One optimizer step:

1. starts      starts_per_step start states (B), seeded by the run's seed and the step (exact resume)
2. play        G = group_size games from each start state with the current policy, every game of the batch in
               one batched generate call per turn (rl/trajectories.py: play); locally, or through an
               OpenAI-compatible server the policy's LoRA adapter is pushed to once per step (backend=server)
3. advantages  one reward per trajectory (the environment's: tic-tac-toe's win 1 / draw 0.5 / loss 0 / invalid
               -1 + ln(m + 1)/ln 100), GRPO's group-relative advantage over the G games of a start state,
               (r - mean) / (std + 1e-4) (scale_rewards group | batch | none)
4. loss        every reply of a trajectory is a row whose completion carries the trajectory's advantage;
               grpo_loss (objectives/rl.py, trl's dapo normalisation: one token mean over the step) on the agent's
               tokens only; the environment's messages are prompt and never trained. With one update per batch
               the ratio is 1 and this is REINFORCE with a group baseline.
5. monitor     win / draw / loss / invalid rates, moves and reward of the training games; every train.eval_every
               steps held-out games from fixed start states (and the environment's held-out options: tools' test
               split), greedy (val/win, ...) and sampled at
               `temperature` (val/sampled_win, ...); transcripts in trajectories.jsonl; plots/agent.png
6. save        checkpoints (atomic, exact resume), metrics.jsonl, <out_dir>/model (LoRA: adapter/ and merged)

A small model needs the move format first: `alignlab agent-rl --write-format-data FILE` writes the environment's
format chats (tic-tac-toe: random legal moves), for `alignlab sft` to teach before RL (labs/04_tool_use).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from alignlab.config import save_config
from alignlab.data.cache import atomic_path
from alignlab.envs import ENVS, make_env
from alignlab.errors import ConfigError
from alignlab.infer import SamplingParams
from alignlab.lora import LoraOptions
from alignlab.model.hf import resolve_model_dir
from alignlab.objectives.rl import ClipConfig, group_advantages, grpo_loss, zero_variance_groups
from alignlab.rl.buffer import micro_batch
from alignlab.rl.remote import ServerRollouts
from alignlab.rl.rollout import completion_logps
from alignlab.rl.run import load_policy, model_meta, save_policy, start_metrics
from alignlab.rl.trajectories import (
    local_generator,
    outcome_metrics,
    play,
    plot_agent_curves,
    server_generator,
    turn_batch,
)
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig, Trainer, autocast_for, resolve_device, set_seed

EVAL_START = 10**9  # held-out start states: EVAL_START + i, never a training start (those are below 2**31 / 7)


@dataclass
class AgentRLConfig:
    out_dir: str = "runs/agent_rl"
    model: str = ""  # the policy's starting point (a chat model directory that knows the move format)
    env: str = "tictactoe"  # tictactoe | guess | tools (alignlab/envs)
    env_options: dict = field(default_factory=dict)  # the environment's options, e.g. {history: true}
    starts_per_step: int = 8  # B start states per step
    group_size: int = 8  # G games from each start state
    max_new_tokens: int = 16  # per reply
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    epsilon: float = 0.2
    method: str = "full"  # full | lora (backend=server needs lora)
    lora: LoraOptions = field(default_factory=LoraOptions)
    eval_games: int = 200  # held-out games per evaluation (0: none)
    backend: str = "local"  # local | server: games played through an OpenAI-compatible server
    server_url: str = ""  # e.g. http://127.0.0.1:8000/v1
    server_model: str = ""  # the name the server serves the base model under
    server_api_key: str | None = None
    server_adapter_dir: str = ""  # where pushed adapters are written (a directory the server reads)
    threads: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=60, lr=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.0, eval_every=20,
        save_every=20, keep_last=2))


def check(cfg: AgentRLConfig) -> None:
    if cfg.env not in ENVS:
        raise ConfigError(f"env must be one of {', '.join(ENVS)}, got {cfg.env!r}")
    if not cfg.model:
        raise ConfigError("model: the model directory to start from is not set (model=path/to/model)")
    if cfg.group_size < 2:
        raise ConfigError(f"group_size must be >= 2 (a group needs a baseline), got {cfg.group_size}")
    if cfg.scale_rewards not in ("group", "batch", "none"):
        raise ConfigError(f"scale_rewards must be group, batch or none, got {cfg.scale_rewards!r}")
    if cfg.method not in ("full", "lora"):
        raise ConfigError(f"method must be full or lora, got {cfg.method!r}")
    if cfg.backend not in ("local", "server"):
        raise ConfigError(f"backend must be local or server, got {cfg.backend!r}")
    if cfg.backend == "server" and cfg.method != "lora":
        raise ConfigError("backend=server pushes the policy to the server as a LoRA adapter: it needs method=lora")
    if cfg.backend == "server" and not (cfg.server_url and cfg.server_model):
        raise ConfigError("backend=server needs server_url (e.g. http://127.0.0.1:8000/v1) and server_model")
    if cfg.temperature <= 0:
        raise ConfigError("temperature must be > 0: the games are sampled")
    if cfg.starts_per_step < 1 or cfg.eval_games < 0:
        raise ConfigError("starts_per_step must be >= 1 and eval_games >= 0")
    try:
        make_env(cfg.env, **cfg.env_options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"env_options {cfg.env_options} for env={cfg.env}: {e}") from None


def start_states(seed: int, step: int, n: int) -> list[int]:
    """The start states (env.reset seeds) of one step."""
    base = (seed * 7_919 + step) * 9_973
    return [(base + b) % (2**31 // 7) for b in range(n)]


class GameBuffer:
    """The Trainer's data: each optimizer step plays a new batch of games (steps 1-3 of the module docstring) and
    hands out its rows in train.grad_accum micro-batches. Nothing outlives a step, so a checkpoint needs only the
    number of batches played: the next batch's start states and seeds follow from it."""

    def __init__(self, cfg: AgentRLConfig, policy, tok, device: torch.device, autocast, out: Path,
                 remote: ServerRollouts | None):
        self.cfg, self.policy, self.tok, self.device, self.autocast, self.out = cfg, policy, tok, device, autocast, out
        self.remote, self.batches, self.parts, self.metrics = remote, 0, [], {}
        self.params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                     top_k=cfg.top_k)

    def play_batch(self) -> None:
        cfg, G = self.cfg, self.cfg.group_size
        t0 = time.perf_counter()
        starts = [s for s in start_states(cfg.train.seed, self.batches, cfg.starts_per_step) for _ in range(G)]
        envs = [make_env(cfg.env, **cfg.env_options) for _ in starts]
        if self.remote is not None:
            generate = server_generator(self.remote, self.remote.push(self.policy), self.params)
        else:
            generate = local_generator(self.policy, self.tok, self.params, self.autocast)
        trajs = play(generate, envs, starts, self.tok, seed=cfg.train.seed * 65_537 + self.batches,
                     max_new_tokens=cfg.max_new_tokens, max_seq_len=self.policy.config.max_seq_len)
        rewards = torch.tensor([t.reward for t in trajs])
        advantages = group_advantages(rewards, G, scale=cfg.scale_rewards)
        batch = turn_batch(trajs, advantages, self.tok.padding_id, self.device)
        self.parts = [micro_batch(batch, part, cfg.train.grad_accum) for part in range(cfg.train.grad_accum)]
        self.metrics = {**outcome_metrics(trajs), "reward_std": rewards.std().item(),
                        "frac_reward_zero_std": zero_variance_groups(rewards, G).float().mean().item(),
                        "rows": batch["input_ids"].shape[0], "rollout_s": time.perf_counter() - t0}
        with open(self.out / "trajectories.jsonl", "a") as f:  # the first game of the batch, for reading
            f.write(json.dumps({"step": self.batches, **trajs[0].record()}) + "\n")
        self.batches += 1

    def next_batch(self) -> dict:
        if not self.parts:
            self.play_batch()
        return self.parts.pop(0)

    def step_metrics(self, step: int, out: dict) -> dict:
        return self.metrics

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches, self.parts = state["batches"], []
        path = self.out / "trajectories.jsonl"  # games logged after the checkpoint are played again: drop them
        if path.exists():
            kept = [x for x in path.read_text().splitlines() if _step_of(x) < self.batches]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(x + "\n" for x in kept))


def _step_of(line: str) -> float:
    """A logged game's step; a line cut short by a kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError):
        return float("inf")


def agent_step(cfg: AgentRLConfig):
    """The Trainer's loss_fn: the clipped surrogate on the agent's tokens, one token mean over the step."""
    clip = ClipConfig("dapo", cfg.epsilon)

    def step(model, batch: dict, normaliser: float):
        logps, _ = completion_logps(model, batch["input_ids"], batch["prompt_lens"], batch["completion_ids"],
                                    batch["completion_mask"], cfg.temperature)
        return grpo_loss(logps, None, None, batch["advantages"], batch["completion_mask"], clip,
                         num_tokens=normaliser)

    return step


def evaluator(cfg: AgentRLConfig, tok, out: Path, autocast, step: Callable[[], int]):
    """evaluate(model): eval_games held-out games from fixed start states, greedy (val/win, ...) and sampled
    (val/sampled_win, ...); the first greedy transcripts to eval_games.jsonl."""
    starts = [EVAL_START + i for i in range(cfg.eval_games)]
    greedy = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    sampled = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                             top_k=cfg.top_k)

    def evaluate(model) -> dict:
        metrics = {}
        for prefix, params in (("val/", greedy), ("val/sampled_", sampled)):
            envs = [make_env(cfg.env, **{**cfg.env_options, **ENVS[cfg.env].held_out}) for _ in starts]
            trajs = play(local_generator(model, tok, params, autocast), envs, starts, tok, seed=12_345,
                         max_new_tokens=cfg.max_new_tokens, max_seq_len=model.config.max_seq_len)
            metrics.update(outcome_metrics(trajs, prefix))
            if prefix == "val/":
                with open(out / "eval_games.jsonl", "a") as f:
                    for t in trajs[:3]:
                        f.write(json.dumps({"step": step(), **t.record()}) + "\n")
        return metrics

    return evaluate if cfg.eval_games else None


def run(cfg: AgentRLConfig, resume: bool = False) -> dict:
    check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, out, model_dir = resolve_device(cfg.train.device), Path(cfg.out_dir), resolve_model_dir(cfg.model)
    tok = load_tokenizer(model_dir)
    set_seed(cfg.train.seed)
    model = load_policy(model_dir, cfg.method, cfg.lora, device)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    autocast = autocast_for(cfg.train.dtype, device)
    remote = None
    if cfg.backend == "server":
        remote = ServerRollouts(cfg.server_url, cfg.server_model, tok, cfg.server_api_key, cfg.server_adapter_dir,
                                str(model_dir), warn=tqdm.write)
    print(f"agent-rl: {cfg.env}, {cfg.starts_per_step} start states x {cfg.group_size} games per step, "
          f"{cfg.train.max_steps} steps; games played {'through ' + cfg.server_url if remote else 'locally'}")

    data = GameBuffer(cfg, model, tok, device, autocast, out, remote)
    trainer: Trainer | None = None
    evaluate = evaluator(cfg, tok, out, autocast, step=lambda: trainer.step if trainer else 0)
    trainer = Trainer(cfg.train, model, data, agent_step(cfg), out, evaluate=evaluate,
                      weight_fn=lambda b: float(b["completion_mask"].sum()), run_config=asdict(cfg),
                      step_metrics=data.step_metrics)
    start = start_metrics(model, evaluate, cfg.train, device, out, resume)
    if start:
        (out / "start.json").write_text(json.dumps(start) + "\n")
    elif (out / "start.json").exists():  # resumed: what the first process measured
        start = json.loads((out / "start.json").read_text())
    try:
        result = trainer.fit(resume=resume)
    finally:
        if remote is not None:
            remote.close()
    result["start"] = start
    if cfg.train.plot:
        plot_agent_curves(out / "metrics.jsonl", out / "plots" / "agent.png", start, title=f"agent-rl: {cfg.env}")
    if result["status"] == "finished":
        save_policy(trainer.export_model(), cfg.method, cfg.model, out, tok, model_meta("agent_rl", cfg, result),
                    result)
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        shown = [k for k in ("val/win", "val/invalid", "val/reward") if k in result and k in start]
        print(f"agent-rl: {result['step']} steps ({result['train_seconds']:.0f} s); held-out games (greedy): "
              + ", ".join(f"{k[4:]} {start[k]:.1%} -> {result[k]:.1%}" for k in shown)
              + f"; model: {result['model_dir']}")
    return result
