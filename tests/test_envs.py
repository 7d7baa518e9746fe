"""Multi-turn environments (alignlab/envs) and agent RL's rollouts and recipe (rl/trajectories.py,
recipes/agent_rl.py): every rule and error path, the reward formulas, rows that train only the agent's tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.envs import GuessNumber, TicTacToe, ToolTask, legal_move_records, make_env
from alignlab.envs.tictactoe import free_squares, invalid_reward, parse_move, render, winner
from alignlab.infer import Completion
from alignlab.rl.trajectories import outcome_metrics, play, turn_batch

# --- tic-tac-toe ----------------------------------------------------------------------------------------------------


def board(rows: str) -> dict[str, str]:
    """'x.o/...' style: three rows of three cells, rows A-C."""
    cells = rows.replace("/", "")
    return {r + c: cells[3 * i + j] for i, r in enumerate("ABC") for j, c in enumerate("123")}


@pytest.mark.parametrize("rows, who", [("xxx/.o./o..", "x"), ("o../o.x/ox.", "o"), ("x.o/.x./o.x", "x"),
                                       ("x.o/.o./o.x", "o"), ("xo./xo./.x.", None), ("xox/xoo/oxx", None)])
def test_winner_on_rows_columns_diagonals_and_draws(rows, who):
    assert winner(board(rows)) == who


@pytest.mark.parametrize("reply, square, error", [
    ("<move>B3</move>", "B3", None), (" <move> a1 </move>\n", "A1", None),
    ("B3", None, "bad XML"), ("<move>B3", None, "bad XML"), ("<mov>B3</mov>", None, "bad XML"),
    ("<move><x/>B3</move>", None, "bad XML"), ("<move>B3</move><move>A1</move>", None, "bad XML"),
    ("<move>D1</move>", None, "bad square"), ("<move>A4</move>", None, "bad square"),
    ("<move></move>", None, "bad square")])
def test_parse_move(reply, square, error):
    got, err = parse_move(reply)
    assert got == square
    assert (err is None) if error is None else err.startswith(error)


def test_invalid_reward_is_the_notebooks_formula_and_below_a_loss():
    assert invalid_reward(0) == -1.0
    assert invalid_reward(3) == pytest.approx(-1 + math.log(4) / math.log(100))
    assert all(invalid_reward(m) < 0.0 for m in range(5))
    assert [invalid_reward(m) for m in range(5)] == sorted(invalid_reward(m) for m in range(5))


def test_a_game_is_seeded_and_the_opponent_opens_when_the_agent_is_o():
    symbols = set()
    for seed in range(20):
        env = TicTacToe()
        messages = env.reset(seed)
        symbols.add(env.symbol)
        placed = 9 - len(free_squares(env.board))
        assert placed == (1 if env.symbol == "o" else 0)
        assert messages[1]["content"] == render(env.board, env.symbol)
        again = TicTacToe()
        assert again.reset(seed) == messages and again.board == env.board
    assert symbols == {"x", "o"}


def test_an_occupied_square_a_bad_square_and_bad_xml_end_the_game_as_invalid():
    for reply, error in (("<move>{taken}</move>", "occupied"), ("<move>Z9</move>", "bad square"), ("B3!", "bad XML")):
        env = TicTacToe()
        seed = next(s for s in range(100) if TicTacToe().reset(s) and _symbol(s) == "o")
        env.reset(seed)
        taken = next(s for s in env.board if env.board[s] != ".")
        step = env.step(reply.format(taken=taken))
        assert step.done and error in step.info["error"] and step.reward == invalid_reward(0)
        assert env.outcome()["invalid"] == 1.0 and env.outcome()["moves"] == 0.0
        with pytest.raises(RuntimeError, match="over"):
            env.step("<move>A1</move>")


def _symbol(seed: int) -> str:
    env = TicTacToe()
    env.reset(seed)
    return env.symbol


def play_first_free(env: TicTacToe) -> tuple[float, dict]:
    """Play the first free square every turn to the end; (reward, outcome)."""
    while True:
        step = env.step(f"<move>{free_squares(env.board)[0]}</move>")
        if step.done:
            return step.reward, env.outcome()
        assert step.messages[0]["content"] == render(env.board, env.symbol)


def test_whole_games_end_in_a_win_draw_or_loss_with_its_reward():
    seen = {}
    for seed in range(60):
        env = TicTacToe()
        env.reset(seed)
        reward, outcome = play_first_free(env)
        result = next(k for k in ("win", "draw", "loss", "invalid") if outcome[k])
        assert reward == {"win": 1.0, "draw": 0.5, "loss": 0.0}[result]
        if result == "win":
            assert winner(env.board) == env.symbol
        elif result == "loss":
            assert winner(env.board) == env.opponent
        else:
            assert winner(env.board) is None and not free_squares(env.board)
        seen[result] = seen.get(result, 0) + 1
    assert set(seen) == {"win", "draw", "loss"}


def test_the_context_is_the_system_prompt_and_the_last_board_unless_history():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "b1"},
                {"role": "assistant", "content": "m"}, {"role": "user", "content": "b2"}]
    assert TicTacToe().context(messages) == [messages[0], messages[3]]
    assert TicTacToe(history=True).context(messages) == messages


def test_legal_move_records_answer_a_free_square_of_the_board_shown():
    records = legal_move_records(300, seed=1)
    assert len(records) == 300 and records == legal_move_records(300, seed=1)
    for r in records:
        shown = r["messages"][1]["content"]
        free = shown.rsplit("Free: ", 1)[1].split()
        square, error = parse_move(r["messages"][2]["content"])
        assert error is None and square in free
    assert len({r["messages"][1]["content"] for r in records}) > 150  # many positions, not a few openings


# --- guess the number, tool tasks -----------------------------------------------------------------------------------


def test_guess_the_number_needs_several_turns_and_counts_bad_replies():
    env = GuessNumber(high=16, max_turns=6)
    env.reset(3)
    lo, hi, guesses = 1, 16, 0
    while True:
        guess = (lo + hi) // 2
        step = env.step(f"<guess>{guess}</guess>")
        guesses += 1
        if step.done:
            break
        if step.messages[0]["content"] == "Higher.":
            lo = guess + 1
        else:
            assert step.messages[0]["content"] == "Lower."
            hi = guess - 1
    assert env.found and step.reward == pytest.approx(1 - 0.1 * (guesses - 1)) and guesses <= 4
    env.reset(3)
    for reply in ("seven", "<guess>0</guess>", "<guess>17</guess>", "<guess>1</guess>", "<guess>2</guess>"):
        step = env.step(reply)
        assert not step.done
    step = env.step("<guess>3</guess>" if env.secret != 3 else "<guess>4</guess>")
    assert step.done and step.reward == 0.0 and env.outcome() == {"win": 0.0, "moves": 6.0, "invalid": 1.0}


def test_a_tool_task_runs_the_call_and_checks_the_answer(world):
    env = ToolTask(world_seed=0, split="test")
    i = next(k for k, r in enumerate(env.records) if r["kind"] == "weather")
    messages = env.reset(i)
    record = env.records[i]
    assert messages == record["messages"][:2] and env.tools == record["tools"]
    call = json.dumps({"name": record["call"]["name"], "arguments": record["call"]["arguments"]})
    step = env.step(f"<tool_call>\n{call}\n</tool_call>")
    assert not step.done and step.messages[0]["role"] == "tool"
    assert record["facts"][1].split()[1] in step.messages[0]["content"]  # the high temperature the tool returned
    step = env.step(record["messages"][-1]["content"])
    assert step.done and step.reward == 1.0
    env.reset(i)  # the right words without the call: no credit
    assert env.step(record["messages"][-1]["content"]).reward == 0.0


# --- rollouts: play, rows ---------------------------------------------------------------------------------------------


class Scripted:
    """A generator that answers each prompt with the first free square it shows (or a fixed reply), recording the
    seeds it was given."""

    def __init__(self, tok, reply: str | None = None):
        self.tok, self.reply, self.seeds = tok, reply, []

    def __call__(self, prompt_ids, seeds):
        self.seeds += seeds
        outs = []
        for ids in prompt_ids:
            text = self.tok.decode(ids)
            move = self.reply or f"<move>{text.rsplit('Free: ', 1)[1].split()[0][:2]}</move>"
            tokens = self.tok.encode(move, add_special_tokens=False) + [self.tok.eos_token_id]
            outs.append(Completion(tokens, move, None, "stop", ids))
        return outs


def test_play_turns_each_reply_into_a_row_that_trains_only_the_agents_tokens(world):
    tok = world.tokenizer()
    gen = Scripted(tok)
    starts = [5, 5, 9]
    envs = [TicTacToe() for _ in starts]
    trajs = play(gen, envs, starts, tok, seed=0, max_new_tokens=16)
    for t, env in zip(trajs, envs):
        expected, _ = play_first_free(_fresh(t.start))
        assert t.reward == expected and len(t.turns) == env.moves
        for turn in t.turns:  # each row's prompt is exactly what the model was shown before that reply
            assert tok.decode(turn.prompt_ids).endswith("<|assistant|>")
    assert len(set(gen.seeds)) == len(gen.seeds)  # one seed per game and turn
    adv = torch.tensor([1.0, -1.0, 0.5])
    batch = turn_batch(trajs, adv, tok.padding_id, torch.device("cpu"))
    rows = sum(len(t.turns) for t in trajs)
    assert batch["input_ids"].shape[0] == rows
    k = 0
    for j, t in enumerate(trajs):
        for turn in t.turns:
            n = int(batch["completion_mask"][k].sum())
            assert batch["completion_ids"][k, :n].tolist() == turn.completion.token_ids
            assert int(batch["prompt_lens"][k]) == len(turn.prompt_ids)
            assert batch["advantages"][k] == adv[j] and batch["trajectory"][k] == j
            k += 1
    m = outcome_metrics(trajs)
    assert m["reward"] == pytest.approx(sum(t.reward for t in trajs) / 3)
    assert m["win"] + m["draw"] + m["loss"] + m["invalid"] == pytest.approx(1.0)


def _fresh(seed: int) -> TicTacToe:
    env = TicTacToe()
    env.reset(seed)
    return env


def test_a_game_whose_prompt_would_overflow_the_context_ends_with_the_timeout_reward(world):
    tok = world.tokenizer()
    trajs = play(Scripted(tok), [make_env("tictactoe")], [1], tok, seed=0, max_new_tokens=16, max_seq_len=40)
    assert trajs[0].turns == [] and trajs[0].errors == ["context full"] and trajs[0].reward == 0.0


def test_make_env_names_the_environments():
    assert isinstance(make_env("guess", high=8), GuessNumber)
    with pytest.raises(ValueError, match="tictactoe"):
        make_env("chess")


def test_a_training_directory_question_is_checked_against_the_real_directory():
    env = ToolTask(world_seed=0, split="train")
    i = next(k for k, r in enumerate(env.records) if r["kind"] == "lookup")
    env.reset(i)
    record = env.records[i]
    real = env.world.directory.lookup(**record["call"]["arguments"])
    assert env.facts == [real] and record["facts"] != [real]  # the chat's made-up entry is not the answer
    call = json.dumps({"name": "lookup", "arguments": record["call"]["arguments"]})
    assert real in env.step(f"<tool_call>{call}</tool_call>").messages[0]["content"]
    assert env.step(f"It is {real}.").reward == 1.0
    assert ToolTask.held_out == {"split": "test"} and TicTacToe.held_out == {}


def test_the_blocking_opponent_wins_when_it_can_and_blocks_when_it_must():
    env = TicTacToe(opponent="blocking")
    seed = next(s for s in range(100) if _symbol(s) == "x")
    env.reset(seed)
    env.step("<move>A1</move>")  # x at A1, o somewhere
    o_square = next(s for s in env.board if env.board[s] == "o")
    second = "A2" if o_square not in ("A2", "A3") else "B1"
    third = "A3" if second == "A2" else "C1"
    env.step(f"<move>{second}</move>")  # x threatens a line: the blocking opponent takes the third square
    assert env.board[third] == "o"
    env = TicTacToe(opponent="blocking")
    env.board = board("xx./oo./x..")
    env.symbol, env.opponent, env.rng = "x", "o", __import__("random").Random(0)
    env._opponent_move()
    assert env.board["B3"] == "o"  # its own win comes before blocking x's A3
    with pytest.raises(ValueError, match="blocking"):
        TicTacToe(opponent="smart")


def test_a_game_cut_at_max_turns_counts_as_cut(world):
    from alignlab.envs import Env, Step

    class Endless(Env):
        max_turns, timeout_reward = 2, -0.5

        def reset(self, seed):
            return [{"role": "user", "content": "Free: A1"}]

        def step(self, reply):
            return Step([{"role": "user", "content": "Free: A1"}])

    tok = world.tokenizer()
    trajs = play(Scripted(tok), [Endless(), TicTacToe()], [0, 1], tok, seed=0, max_new_tokens=16)
    assert len(trajs[0].turns) == 2 and trajs[0].reward == -0.5 and trajs[0].outcome == {"cut": 1.0}
    assert trajs[1].outcome["cut"] == 0.0
    m = outcome_metrics(trajs[1:])
    assert m["win"] + m["draw"] + m["loss"] + m["invalid"] + m["cut"] == 1.0
