"""alignlab.tools.agent.run_agent: the loop runs calls until a reply has none (or the turn limit), through a scripted
backend, the local engine's chat template and parser, and an OpenAI-compatible server (`alignlab serve`)."""

from __future__ import annotations

import json

import pytest

from alignlab.infer import Completion, Engine, SamplingParams
from alignlab.tools import ToolBox
from alignlab.tools.agent import AgentResult, LocalChat, OpenAIChat, assistant_message, run_agent

BOX = ToolBox(builtins=["calculator"])
CALC = {"name": "calculator", "arguments": {"expression": "347 * 28"}}


def scripted(*replies):
    """A backend that answers with the given assistant messages in turn and records what it was shown."""
    seen = []

    def chat(messages, tools):
        seen.append((list(messages), tools))
        return replies[len(seen) - 1]
    chat.seen = seen
    return chat


def test_calls_run_until_a_reply_has_none(tmp_path):
    chat = scripted(assistant_message("Let me compute.", [CALC, {"name": "calculator",
                                                                  "arguments": {"expression": "1 / 0"}}], turn=1),
                    assistant_message("347 * 28 = 9716.", []))
    start = [{"role": "user", "content": "What is 347 * 28?"}]
    result = run_agent(chat, start, BOX)
    assert (result.turns, result.finished, result.calls, result.answer) == (2, True, 2, "347 * 28 = 9716.")
    assert start == [{"role": "user", "content": "What is 347 * 28?"}]  # the caller's list is left alone
    roles = [m["role"] for m in result.messages]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]
    assert [m["content"] for m in result.messages[2:4]] == ["9716", "error: division by zero"]
    assert result.messages[2]["tool_call_id"] == "call_1_0"
    assert chat.seen[1][0] == result.messages[:4] and chat.seen[0][1] == BOX.tools  # both results seen at once
    result.save(tmp_path / "t.jsonl")
    result.save(tmp_path / "t.jsonl")
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["messages"] == result.messages


def test_turn_limit():
    forever = scripted(*[assistant_message("", [CALC], turn=i) for i in range(3)])
    result = run_agent(forever, [{"role": "user", "content": "loop"}], BOX, max_turns=3)
    assert (result.turns, result.finished, result.calls) == (3, False, 3)
    assert isinstance(result, AgentResult) and result.answer == ""
    with pytest.raises(ValueError, match="max_turns"):
        run_agent(forever, [], BOX, max_turns=0)


def test_local_chat_renders_the_tools_and_parses_the_calls(base, monkeypatch):
    from alignlab.model.hf import load_model
    from alignlab.text import load_tokenizer

    engine = Engine(load_model(base), load_tokenizer(base))
    prompts, texts = [], iter(['Computing.<tool_call>\n{"name": "calculator", "arguments": '
                               '{"expression": "347 * 28"}}\n</tool_call>', "It is 9716."])

    def generate(batch, params):
        prompts.append(engine.tokenizer.decode(batch[0]))
        return [Completion([], next(texts), None, "stop", batch[0])]
    monkeypatch.setattr(engine, "generate", generate)
    chat = LocalChat(engine, SamplingParams(max_new_tokens=8), chat_template="chatml")  # Qwen2.5's tool format
    result = run_agent(chat, [{"role": "user", "content": "347*28?"}], BOX)
    assert (result.turns, result.calls, result.answer) == (2, 1, "It is 9716.")
    assert '"name": "calculator"' in prompts[0] and "<tools>" in prompts[0]  # the schema is in the prompt
    assert "<tool_response>\n9716\n</tool_response>" in prompts[1]  # and the result in the next one


def test_openai_chat_against_alignlab_serve(base):
    from alignlab.model.hf import load_model
    from alignlab.serve import build_state
    from alignlab.text import load_tokenizer

    from .test_serve import serving

    model = load_model(base).requires_grad_(False)
    state = build_state(model, load_tokenizer(base), model_names=["tiny"])
    with serving(state) as server:
        chat = OpenAIChat(server.api, "tiny", max_tokens=8, temperature=0)
        result = run_agent(chat, [{"role": "user", "content": "Hello"}], BOX, max_turns=2)
    assert result.turns >= 1 and result.messages[1]["role"] == "assistant"
    if result.finished:  # a random model rarely writes a call; when it does not, one turn and its text
        assert result.turns == 1 and isinstance(result.answer, str)


def test_alignlab_agent_command(base, tmp_path, capsys):
    from alignlab.cli import main

    out = tmp_path / "transcripts.jsonl"
    assert main(["agent", "--model", str(base), "--template", "chatml", "--prompt", "What is 2 + 3?",
                 "--max-new-tokens", "6", "--max-turns", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("assistant> ") and "turns" in printed.err
    record = json.loads(out.read_text())
    assert record["messages"][0] == {"role": "user", "content": "What is 2 + 3?"} and record["turns"] >= 1
    assert main(["agent", "--model", str(base), "--tools", "shell", "--prompt", "hi"]) == 2
    assert "unknown built-in tool 'shell'" in capsys.readouterr().err
