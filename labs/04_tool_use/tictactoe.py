"""Lab 04's agent numbers: tic-tac-toe against a random opponent, learnt by trajectory-group RL, for three seeds.

    python labs/04_tool_use/tictactoe.py --runs runs/table              # after `alignlab pipeline --seed N` per seed
    python labs/04_tool_use/tictactoe.py --runs runs/table --seeds 0 --out runs/ttt

For each seed, from the pipeline's SFT model <runs>/seed<N>/sft/model:

1. format   `alignlab agent-rl --write-format-data`: 4000 boards with a random legal move as the reply
2. sft      `alignlab sft` on them, 600 steps: the model learns the <move>B3</move> format and to pick a free
            square; it plays like a random legal player, so it can sometimes win but does not aim to
3. rl       `alignlab agent-rl env=tictactoe`, 120 steps of 8 start states x 8 games, lr 3e-4: every game's
            reward (win 1, draw 0.5, loss 0, invalid -1 + ln(m+1)/ln 100), GRPO's group-relative advantage
4. measure  400 held-out games (fixed start states) before and after RL, greedy and sampled at temperature 1;
            win / draw / loss / invalid rates with Wilson 95% intervals; the wall-clock seconds of each part
5. skills   on 300 boards from random games where the agent can win at once, and 300 where it must block the
            opponent's line, how often the greedy move does so, before and after RL (`skills`), the opening
            square the model picks as x on the empty board, and 400 greedy games against an opponent that wins when
            it can and blocks when it must (one the model never trained against)

Writes <out>/tictactoe.json and prints the Markdown table the lab quotes. One thread per run (threads=1).

    python labs/04_tool_use/tictactoe.py --server --out runs/ttt        # after a seed-0 run: local vs server games

`--server` trains seed 0's format-SFT model with LoRA twice from the same seed, once playing locally and once
through `alignlab serve` (started here on a free port, fp32 like the local run) with the adapter pushed every step,
and compares the two runs step by step: <out>/server_vs_local.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from alignlab.eval.stats import wilson_interval

RESULTS = ("win", "draw", "loss", "invalid")


def skill_boards(n: int, seed: int = 99) -> dict[str, list]:
    """Boards (the agent to move) from random games: 'win' where a move wins at once, 'block' where none wins but
    the opponent threatens a line; each with the set of right moves."""
    import random

    from alignlab.envs import TicTacToe
    from alignlab.envs.tictactoe import completing, free_squares

    rng, found = random.Random(seed), {"win": [], "block": []}
    while min(map(len, found.values())) < n:
        env = TicTacToe()
        messages = env.reset(rng.randrange(10**9) + 10**9)
        while True:
            wins, threats = completing(env.board, env.symbol), completing(env.board, env.opponent)
            kind = "win" if wins else "block" if threats else None
            if kind and len(found[kind]) < n:
                found[kind].append((env.context(messages), wins or threats))
            step = env.step(f"<move>{rng.choice(free_squares(env.board))}</move>")
            if step.done:
                break
            messages += [{"role": "assistant", "content": ""}, *step.messages]
    return found


def skills(model_dir: Path, n: int = 300) -> dict:
    """The greedy move's rate of winning at once / blocking on skill_boards, and the opening as x."""
    import torch

    from alignlab.envs import TicTacToe
    from alignlab.envs.tictactoe import parse_move
    from alignlab.eval.world_suite import generate_replies
    from alignlab.infer import SamplingParams
    from alignlab.model.hf import load_model
    from alignlab.recipes.agent_rl import EVAL_START
    from alignlab.rl.trajectories import local_generator, outcome_metrics, play
    from alignlab.text import load_tokenizer

    torch.set_num_threads(1)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    out = {}
    for kind, boards in skill_boards(n).items():
        replies = generate_replies(model, tok, [b for b, _ in boards], max_new_tokens=16)
        out[kind] = sum(parse_move(r)[0] in right for r, (_, right) in zip(replies, boards)) / len(boards)
    env = TicTacToe()
    x_start = next(s for s in range(100) if env.reset(s) and env.symbol == "x")
    out["opening"] = parse_move(generate_replies(model, tok, [env.context(env.reset(x_start))], 16)[0])[0]
    # 400 greedy games against an opponent that wins when it can and blocks when it must
    starts = [EVAL_START + i for i in range(400)]
    games = play(local_generator(model, tok, SamplingParams(max_new_tokens=16, temperature=0.0)),
                 [TicTacToe(opponent="blocking") for _ in starts], starts, tok, seed=0, max_new_tokens=16)
    out.update({f"blocking_{k}": v for k, v in outcome_metrics(games).items() if k in RESULTS})
    return out


def sh(args: list[str], log: Path) -> float:
    """Run an alignlab command, its output to `log`; returns its wall-clock seconds."""
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "alignlab.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    if code:
        sys.exit(f"failed ({code}): alignlab {' '.join(args)}; see {log}")
    return time.perf_counter() - start


def one_seed(seed: int, runs: Path, out: Path, games: int, rl_steps: int) -> dict:
    d = out / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    seconds = {"format": sh(["agent-rl", "--write-format-data", str(d / "moves.jsonl"), "--examples", "4000",
                             f"train.seed={seed}"], d / "format.log")}
    seconds["sft"] = sh(["sft", f"model={runs / f'seed{seed}' / 'sft' / 'model'}", f"data={d / 'moves.jsonl'}",
                         f"out_dir={d / 'sft'}", "max_len=128", "batch_size=32", "train.max_steps=600",
                         "train.lr=1e-3", "train.warmup_steps=20", "train.eval_every=0", "train.save_every=0",
                         "sample_prompts=0", "threads=1", f"train.seed={seed}", "train.overwrite=true"],
                        d / "sft.log")
    seconds["rl"] = sh(["agent-rl", "env=tictactoe", f"model={d / 'sft' / 'model'}", f"out_dir={d / 'rl'}",
                        f"train.max_steps={rl_steps}", "train.lr=3e-4", "train.eval_every=40", "train.save_every=40",
                        f"eval_games={games}", "threads=1", f"train.seed={seed}", "train.overwrite=true"],
                       d / "rl.log")
    result = json.loads((d / "rl" / "result.json").read_text())
    row = {"seed": seed, "seconds": {k: round(v, 1) for k, v in seconds.items()},
           "minutes_total": round(sum(seconds.values()) / 60, 2),
           "skills_before": skills(d / "sft" / "model"), "skills_after": skills(d / "rl" / "model")}
    for when, m in (("before", result["start"]), ("after", result)):
        for mode, prefix in (("greedy", "val/"), ("sampled", "val/sampled_")):
            for k in RESULTS:
                p = m[prefix + k]
                lo, hi = wilson_interval(round(p * games), games)
                row[f"{when}_{mode}_{k}"] = {"rate": p, "ci": [lo, hi]}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| seed | win before -> after (greedy) | invalid | win (sampled, T=1) | invalid (sampled) | minutes |",
             "|---|---|---|---|---|---|"]

    def cell(r, mode, k):
        a, b = r[f"before_{mode}_{k}"], r[f"after_{mode}_{k}"]
        return (f"{a['rate']:.1%} -> **{b['rate']:.1%}** ({b['ci'][0]:.1%}-{b['ci'][1]:.1%}), "
                f"{100 * (b['rate'] - a['rate']):+.1f} pts")

    for r in rows:
        inv = (f"{r['before_greedy_invalid']['rate']:.1%} -> {r['after_greedy_invalid']['rate']:.1%}")
        inv_s = (f"{r['before_sampled_invalid']['rate']:.1%} -> {r['after_sampled_invalid']['rate']:.1%}")
        minutes = f"{r['minutes_total']:.1f} ({r['seconds']['sft'] / 60:.1f} SFT + {r['seconds']['rl'] / 60:.1f} RL)"
        lines.append(f"| {r['seed']} | {cell(r, 'greedy', 'win')} | {inv} | {cell(r, 'sampled', 'win')} | {inv_s} | "
                     f"{minutes} |")
    lines += ["", "| seed | wins at once when it can (before -> after) | blocks a line when it must | opening as x | "
                  "vs the blocking opponent: win | loss |", "|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["skills_before"], r["skills_after"]
        lines.append(f"| {r['seed']} | {a['win']:.0%} -> **{b['win']:.0%}** | {a['block']:.0%} -> **{b['block']:.0%}** "
                     f"| {a['opening']} -> {b['opening']} | {a['blocking_win']:.1%} -> {b['blocking_win']:.1%} | "
                     f"{a['blocking_loss']:.1%} -> {b['blocking_loss']:.1%} |")
    return "\n".join(lines)


def server_vs_local(out: Path, steps: int = 60, games: int = 400) -> dict:
    """Seed 0's format-SFT model, LoRA RL locally and through alignlab serve; the two runs compared."""
    import socket

    import httpx

    sft = out / "seed0" / "sft" / "model"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([sys.executable, "-m", "alignlab.cli", "serve", str(sft), "--port", str(port),
                               "--dtype", "fp32", "--served-model-name", "base"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                httpx.get(url + "/models", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        common = ["agent-rl", "env=tictactoe", f"model={sft}", "method=lora", "train.lr=1e-3", "train.dtype=fp32",
                  f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.save_every={steps}",
                  f"eval_games={games}", "threads=1", "train.seed=0", "train.overwrite=true"]
        seconds = {"local": sh([*common, f"out_dir={out / 'lora_local'}"], out / "lora_local.log"),
                   "server": sh([*common, f"out_dir={out / 'lora_server'}", "backend=server", f"server_url={url}",
                                 "server_model=base"], out / "lora_server.log")}
    finally:
        server.terminate()
        server.wait(30)
    runs = {k: [json.loads(x) for x in (out / f"lora_{k}" / "metrics.jsonl").read_text().splitlines()]
            for k in ("local", "server")}
    steps_of = {k: {r["step"]: r for r in v if "loss" in r} for k, v in runs.items()}
    same = sum(all(steps_of["local"][i].get(k) == steps_of["server"][i].get(k) for k in ("loss", "reward", "win",
                                                                                          "rows"))
               for i in steps_of["local"] if i in steps_of["server"])
    games_same = ((out / "lora_local" / "trajectories.jsonl").read_text()
                  == (out / "lora_server" / "trajectories.jsonl").read_text())
    results = {k: json.loads((out / f"lora_{k}" / "result.json").read_text()) for k in ("local", "server")}
    row = {"steps": steps, "steps_identical": same, "logged_games_identical": games_same,
           "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for k, r in results.items():
        row[k] = {m: {"before": r["start"][f"val/{m}"], "after": r[f"val/{m}"]}
                  for m in ("win", "invalid", "sampled_win", "sampled_invalid")}
    (out / "server_vs_local.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


def main() -> None:
    if sys.argv[1:2] == ["--server"]:  # python tictactoe.py --server [OUT]
        print(json.dumps(server_vs_local(Path(sys.argv[2] if len(sys.argv) > 2 else "runs/ttt")), indent=1))
        return
    if sys.argv[1:2] == ["--skills"]:  # python tictactoe.py --skills MODEL_DIR [...]: just the skill rates
        for d in sys.argv[2:]:
            print(d, skills(Path(d)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs/table", help="pipeline runs: <runs>/seed<N>/sft/model")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--games", type=int, default=400, help="held-out games per evaluation")
    p.add_argument("--rl-steps", type=int, default=120)
    p.add_argument("--out", default="runs/ttt")
    p.add_argument("--report", action="store_true", help="no training: the table from <out>/tictactoe.json, the "
                   "skill rates measured again")
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        rows = json.loads((out / "tictactoe.json").read_text())
        for r in rows:
            d = out / f"seed{r['seed']}"
            r["skills_before"], r["skills_after"] = skills(d / "sft" / "model"), skills(d / "rl" / "model")
        (out / "tictactoe.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(table(rows))
        return
    rows = []
    for seed in map(int, args.seeds.split(",")):
        rows.append(one_seed(seed, Path(args.runs), out, args.games, args.rl_steps))
        print(f"seed {seed}: {rows[-1]['minutes_total']} min", flush=True)
    (out / "tictactoe.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
