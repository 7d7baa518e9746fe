"""Multi-turn rollouts for agent RL: groups of whole trajectories, played turn by turn, all games in one batch.

    generate = local_generator(policy, tok, params)                  # or server_generator(remote, name, params)
    trajs = play(generate, [make_env("tictactoe") for _ in starts], starts, tok, seed, max_new_tokens=16)
    batch = turn_batch(trajs, advantages, pad_id, device)           # one row per (trajectory, turn)

1. play      every environment is reset to its start state; each round, the games still running show the model
             env.context(messages) through the chat template (their tools listed), one batched generate call
             answers all of them (one seed per game and turn), and each reply goes to env.step. A game ends when
             the environment says so, after env.max_turns replies (reward env.timeout_reward), or when its next
             prompt would not leave max_new_tokens of room in the model's context (the same). Those two are
             "cut" in the outcome (cut: 1), so that an environment's own endings and the cut ones add up to 1.
2. rows      a trajectory of k replies is k rows: prompt = what the model saw before the reply, completion = the
             tokens it sampled (EOS included). Environment and tool messages are only ever prompt, so the loss
             trains the agent's own tokens and nothing the environment wrote.
3. advantage every row of a trajectory carries that trajectory's advantage (the recipe's: GRPO's group-relative
             one over the G trajectories of a start state).

A generator is (prompt token ids, seeds) -> Completions. Locally: alignlab's batched Engine on the policy's weights;
through a server: ServerRollouts.sample on the adapter pushed once per step (rl/remote.py), seeded the same way, so
the same policy plays the same games.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignlab.envs import Env
from alignlab.infer import Completion, Engine, SamplingParams
from alignlab.rl.monitor import plot_panels
from alignlab.rl.rollout import make_rollout

Generator = Callable[[list[list[int]], list[int]], list[Completion]]


@dataclass
class Turn:
    prompt_ids: list[int]
    completion: Completion


@dataclass
class Trajectory:
    start: int  # the start state's seed (env.reset)
    messages: list[dict]  # the whole conversation, the environment's messages included
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    outcome: dict = field(default_factory=dict)  # env.outcome(): win, draw, loss, invalid, moves, ...
    errors: list[str] = field(default_factory=list)  # what the environment objected to

    def record(self) -> dict:
        """The transcript as one JSON Lines record."""
        return {"start": self.start, "reward": self.reward, **self.outcome, "errors": self.errors,
                "messages": self.messages}


def local_generator(model, tokenizer, params: SamplingParams, autocast=None) -> Generator:
    """Batched sampling from the policy's own weights (eval mode, no gradients), one seed per row."""

    @torch.no_grad()
    def generate(prompt_ids: list[list[int]], seeds: list[int]) -> list[Completion]:
        was_training = model.training
        model.eval()
        try:
            with autocast or contextlib.nullcontext():
                requests = [SamplingParams(**{**params.__dict__, "seed": int(s)}) for s in seeds]
                return Engine(model, tokenizer).generate(prompt_ids, requests)
        finally:
            model.train(was_training)

    return generate


def server_generator(remote, name: str, params: SamplingParams) -> Generator:
    """Sampling from an OpenAI-compatible server's model `name` (an adapter ServerRollouts.push loaded)."""
    return lambda prompt_ids, seeds: remote.sample(name, prompt_ids, 1, params, seeds)


def turn_seed(seed: int, game: int, turn: int) -> int:
    """The sampling seed of one reply: fixed by the batch's seed, the game's index and the turn."""
    return (seed * 1_000_003 + game * 101 + turn) % 2**62


def play(generate: Generator, envs: list[Env], starts: list[int], tokenizer, seed: int, max_new_tokens: int,
         max_seq_len: int | None = None) -> list[Trajectory]:
    """Play every environment from its start state to the end; see step 1 of the module docstring."""
    trajs = [Trajectory(s, env.reset(s)) for env, s in zip(envs, starts)]
    active, turn = list(range(len(envs))), 0
    while active:
        prompts, running = [], []
        for i in active:
            ids = tokenizer.apply_chat_template(envs[i].context(trajs[i].messages), tools=envs[i].tools or None,
                                                add_generation_prompt=True, tokenize=True)
            if max_seq_len is not None and len(ids) + max_new_tokens > max_seq_len:
                trajs[i].errors.append("context full")
                _finish(trajs[i], envs[i], envs[i].timeout_reward, cut=True)
                continue
            prompts.append(ids)
            running.append(i)
        if not running:
            break
        outs = generate(prompts, [turn_seed(seed, i, turn) for i in running])
        active = []
        for i, ids, out in zip(running, prompts, outs):
            t, env = trajs[i], envs[i]
            t.turns.append(Turn(ids, out))
            t.messages.append({"role": "assistant", "content": out.text or ""})
            step = env.step(out.text or "")
            t.messages += step.messages
            if step.info.get("error"):
                t.errors.append(step.info["error"])
            if step.done:
                _finish(t, env, step.reward)
            elif len(t.turns) >= env.max_turns:
                _finish(t, env, env.timeout_reward, cut=True)
            else:
                active.append(i)
        turn += 1
    return trajs


def _finish(t: Trajectory, env: Env, reward: float, cut: bool = False) -> None:
    t.reward, t.outcome = float(reward), {**env.outcome(), "cut": float(cut)}


def turn_batch(trajs: list[Trajectory], advantages: torch.Tensor, pad_id: int,
               device: torch.device) -> dict[str, torch.Tensor]:
    """One row per reply (step 2), each with its trajectory's advantage: input_ids, prompt_lens, completion_ids,
    completion_mask, truncated, advantages [rows] and trajectory [rows] (the trajectory's index)."""
    rows = [(k, turn) for k, t in enumerate(trajs) for turn in t.turns]
    if not rows:
        raise ValueError("no trajectory has a reply: every game ended before the model's first turn")
    rollout = make_rollout([turn.prompt_ids for _, turn in rows], [turn.completion for _, turn in rows], 1, pad_id,
                           device, 0.0)
    index = torch.tensor([k for k, _ in rows], device=device)
    return {**rollout.tensors(), "advantages": advantages.to(device)[index].float(), "trajectory": index}


def outcome_metrics(trajs: list[Trajectory], prefix: str = "") -> dict[str, float]:
    """Means over trajectories of the reward and of every outcome number (win, draw, loss, invalid, moves, ...)."""
    n = max(len(trajs), 1)
    keys = sorted({k for t in trajs for k in t.outcome})
    out = {f"{prefix}reward": sum(t.reward for t in trajs) / n, f"{prefix}turns": sum(len(t.turns) for t in trajs) / n}
    out.update({f"{prefix}{k}": sum(t.outcome.get(k, 0.0) for t in trajs) / n for k in keys})
    return out


PANELS = [("outcomes of the training games", ("win", "draw", "loss", "invalid"), "fraction of games"),
          ("held-out games, greedy", ("val/win", "val/draw", "val/loss", "val/invalid"), "fraction of games"),
          ("held-out games, sampled",
           ("val/sampled_win", "val/sampled_draw", "val/sampled_loss", "val/sampled_invalid"), "fraction of games"),
          ("reward and moves", ("reward", "val/reward", "moves", "val/moves"), "")]


def plot_agent_curves(metrics_path: str | Path, out_png: str | Path, start: dict | None = None,
                      title: str = "") -> Path | None:
    """Win / draw / loss / invalid rates of the training games (smoothed) and of the held-out ones, the reward and
    the moves per game against step, from metrics.jsonl; `start` adds the held-out metrics before training."""
    return plot_panels(metrics_path, out_png, PANELS, (2, 2), title, start)
