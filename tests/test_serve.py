"""The OpenAI-compatible server, driven with the official `openai` client (and httpx where it has no method):
every endpoint, greedy output equal to the Engine's, echo + log-probs as lm-evaluation-harness reads them, tool
calls, adapters, tenants, the 4xx bodies, 429, disconnects, /metrics and the tokenizer endpoints.

Each server runs in-process under uvicorn on a free port, in a background thread, over a tiny random Llama with
TinyWorld's tokenizer. Tool calls, the full queue and disconnects use a scripted engine (ScriptedCore) whose
replies and timing the test decides.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import torch

from alignlab.data.world import TinyWorld
from alignlab.infer import Completion, Engine, SamplingParams
from alignlab.lora import LoraConfig, apply_lora
from alignlab.lora.peft_io import load_adapter, save_adapter
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model
from alignlab.serve import build_state, create_app
from alignlab.serve.backend import RequestOutput
from alignlab.text import load_tokenizer

from .hf_models import require

openai = require("openai")
uvicorn = require("uvicorn")

MAX_LEN = 128


# --- fixtures: a model directory, adapters, servers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = TinyWorld(seed=0, size="quick").tokenizer()
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=MAX_LEN,
                            eos_token_id=tok.eos_token_id))
    return save_model(model, tmp_path_factory.mktemp("tiny"), tokenizer=tok)


def make_adapter(model_dir, out, seed):
    torch.manual_seed(seed)
    model = apply_lora(load_model(model_dir), LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj",
                                                                                           "down_proj"],
                                                         init_lora_weights=False))
    return save_adapter(model, out)


@pytest.fixture(scope="module")
def adapter_dirs(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(model_dir, root / name, seed) for seed, name in enumerate(["a", "b", "c"], 1)}


def load(model_dir):
    model = load_model(model_dir)
    model.requires_grad_(False)
    return model, load_tokenizer(model_dir)


class Server:
    """uvicorn serving the app on a free port in a thread."""

    def __init__(self, state):
        self.state = state
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.api = self.url + "/v1"  # the OpenAI base URL
        config = uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def client(self, key="none", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api, api_key=key, max_retries=0, **kw)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def serving(state):
    server = Server(state)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["continuous", "static"])
def server(request, model_dir, adapter_dirs):
    """The server over LLMEngine (continuous batching) and over StaticEngineCore: same answers."""
    model, tok = load(model_dir)
    state = build_state(model, tok, model_names=["tiny", "tiny-alias"], model_path=str(model_dir),
                        loras={"a": str(adapter_dirs["a"])}, engine=request.param)
    with serving(state) as s:
        yield s


@pytest.fixture(scope="module")
def reference(model_dir):
    """The same weights in the static Engine: what the server's greedy output must equal."""
    model, tok = load(model_dir)
    return Engine(model, tok), model, tok


def greedy(n, **kw):
    return SamplingParams(max_new_tokens=n, temperature=0.0, **kw)


# --- a scripted engine: fixed replies, controllable timing ---------------------------------------------------------

class ScriptedCore:
    """The engine interface, replying `reply` one token per step; each step waits for `gate` if given."""

    def __init__(self, tok, reply: str, gate: threading.Event | None = None):
        self.tok, self.reply, self.gate = tok, reply, gate
        self.todo: dict[str, list[int]] = {}
        self.done: dict[str, list[int]] = {}
        self.prompts: dict[str, list[int]] = {}
        self.aborted: list[str] = []

    def add_request(self, rid, prompt, params, adapter=None):
        self.prompts[rid], self.done[rid] = prompt, []
        self.todo[rid] = self.tok.encode(self.reply, add_special_tokens=False)[:params.max_new_tokens]

    def abort(self, rid):
        self.aborted.append(rid)
        self.todo.pop(rid, None)

    def has_unfinished(self):
        return bool(self.todo)

    def step(self):
        if self.gate is not None:
            self.gate.wait(5)
        outs = []
        for rid in list(self.todo):
            t = self.todo[rid].pop(0)
            self.done[rid].append(t)
            fin = not self.todo[rid]
            comp = None
            if fin:
                del self.todo[rid]
                ids = self.done[rid]
                comp = Completion(ids, self.tok.decode(ids, skip_special_tokens=True), None, "stop", self.prompts[rid])
            outs.append(RequestOutput(rid, [t], None, None, fin, "stop" if fin else None, comp))
        time.sleep(0.005)
        return outs


def scripted_state(model_dir, reply, gate=None, **kw):
    model, tok = load(model_dir)
    core = ScriptedCore(tok, reply, gate)
    return build_state(model, tok, model_names=["tiny"], core=core, **kw), core


# --- models, chat, completions -------------------------------------------------------------------------------------

def test_models_lists_the_base_under_each_name_and_adapters_with_their_parent(server, adapter_dirs):
    models = {m.id: m for m in server.client().models.list().data}
    assert set(models) == {"tiny", "tiny-alias", "a"}
    assert models["a"].parent == "tiny" and models["a"].root == str(adapter_dirs["a"])
    assert models["tiny"].parent is None and models["tiny"].max_model_len == MAX_LEN


def test_greedy_completion_equals_the_engine(server, reference):
    engine, _, tok = reference
    c = server.client()
    expect = engine.generate(["Tom has"], greedy(12))[0]
    r = c.completions.create(model="tiny", prompt="Tom has", max_tokens=12, temperature=0)
    assert r.choices[0].text == expect.text
    assert r.usage.prompt_tokens == len(expect.prompt_token_ids)
    assert r.usage.completion_tokens == len(expect.token_ids)
    ids = tok.encode("The town")  # token ids go in as they are: no BOS added
    r = c.completions.create(model="tiny-alias", prompt=ids, max_tokens=12, temperature=0)
    assert r.choices[0].text == engine.generate([ids], greedy(12))[0].text
    assert r.model == "tiny-alias"


def test_a_list_of_prompts_and_n_choices(server, reference):
    engine, _, tok = reference
    prompts = ["Tom has", "The town"]
    r = server.client().completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    for k, ch in enumerate(r.choices):
        assert ch.text == engine.generate([prompts[k // 2]], greedy(6))[0].text
    ids = [tok.encode(p) for p in prompts]
    r2 = server.client().completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    assert [ch.text for ch in r2.choices] == [r.choices[0].text, r.choices[2].text]


def test_chat_plain_and_streamed_give_the_same_reply(server, reference):
    engine, _, tok = reference
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    c = server.client()
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expect = engine.generate([prompt], greedy(16))[0]
    assert r.choices[0].message.content == expect.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == expect.finish_reason
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(expect.token_ids)
    chunks = list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expect.text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == expect.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expect.token_ids)


def test_streamed_completions_end_with_done(server):
    with httpx.stream("POST", server.url + "/v1/completions", json={
            "model": "tiny", "prompt": "Tom has", "max_tokens": 5, "temperature": 0, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
    plain = server.client().completions.create(model="tiny", prompt="Tom has", max_tokens=5, temperature=0)
    assert text == plain.choices[0].text


def test_echo_with_logprobs_as_lm_eval_reads_it(server, reference):
    """lm-eval's local-completions: token-id prompts, echo, logprobs=1, max_tokens=1; it sums
    token_logprobs[ctxlen:-1] and checks greediness against top_logprobs."""
    _, model, tok = reference
    ids = tok.encode("Tom has 3 apples and")
    r = server.client().completions.create(model="tiny", prompt=[ids], echo=True, logprobs=1, max_tokens=1,
                                           temperature=0, seed=1234)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.inference_mode():
        want = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)
    expect = [want[t - 1, ids[t]].item() for t in range(1, len(ids))]
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(expect, abs=1e-4)
    assert lp.tokens[:len(ids)] == [tok.decode([i]) for i in ids]
    for t in range(1, len(ids)):  # the greedy check lm-eval makes, against an argmax it can compute itself
        assert (lp.token_logprobs[t] == max(lp.top_logprobs[t].values())) == (int(want[t - 1].argmax()) == ids[t])
    assert lp.token_logprobs[-1] == pytest.approx(max(lp.top_logprobs[-1].values()), abs=1e-4)  # greedy token
    assert r.choices[0].text.startswith(tok.decode(ids))
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_chat_logprobs_and_top_logprobs(server):
    r = server.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        assert len(e.top_logprobs) == 3
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-4)  # greedy: the most likely token
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token


def test_stop_strings_cut_the_text(server):
    c = server.client()
    full = c.completions.create(model="tiny", prompt="Tom has", max_tokens=20, temperature=0).choices[0].text
    assert len(full) > 6
    stop = full[3:5]
    r = c.completions.create(model="tiny", prompt="Tom has", max_tokens=20, temperature=0, stop=[stop, "zzzq"])
    assert r.choices[0].text == full[:full.find(stop)] and r.choices[0].finish_reason == "stop"
    chunks = c.completions.create(model="tiny", prompt="Tom has", max_tokens=20, temperature=0, stop=stop,
                                  stream=True)
    assert "".join(ch.choices[0].text for ch in chunks) == full[:full.find(stop)]


def test_a_seed_reproduces_a_sample(server):
    c = server.client()

    def sample(seed):
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=12,
                                      temperature=1.0, top_p=0.95, seed=seed, n=2,
                                      extra_body={"top_k": 50, "min_p": 0.01})
        return [ch.message.content for ch in r.choices]

    first = sample(7)
    assert sample(7) == first
    assert first[0] != first[1] or sample(8) != first  # n choices draw with different seeds


# --- adapters ------------------------------------------------------------------------------------------------------

def test_an_adapter_by_name_generates_what_the_adapted_model_does(server, model_dir, adapter_dirs):
    model, tok = load(model_dir)
    load_adapter(model, adapter_dirs["a"])
    expect = Engine(model, tok).generate(["Tom has"], greedy(10))[0].text
    c = server.client()
    r = c.completions.create(model="a", prompt="Tom has", max_tokens=10, temperature=0)
    assert r.choices[0].text == expect
    base = c.completions.create(model="tiny", prompt="Tom has", max_tokens=10, temperature=0)
    assert base.choices[0].text != expect


def test_load_and_unload_an_adapter(server, adapter_dirs, model_dir):
    c = server.client()
    r = httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "b", "lora_path": str(adapter_dirs["b"])})
    assert r.status_code == 200, r.text
    assert "b" in {m.id for m in c.models.list().data}
    model, tok = load(model_dir)
    load_adapter(model, adapter_dirs["b"])
    expect = Engine(model, tok).generate(["Tom has"], greedy(8))[0].text
    assert c.completions.create(model="b", prompt="Tom has", max_tokens=8, temperature=0).choices[0].text == expect
    bad = httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/no/such/dir"})
    assert bad.status_code == 400 and "error" in bad.json()
    assert httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "b"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="b", prompt="Tom has", max_tokens=2)
    assert httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "b"}).status_code == 404


# --- errors --------------------------------------------------------------------------------------------------------

def test_bad_requests_get_openai_error_bodies(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="nope", prompt="x", max_tokens=2)
    assert e.value.body["message"] == "The model `nope` does not exist." and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="Tom has", max_tokens=MAX_LEN)
    assert "maximum context length" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny", prompt=[[1, 2, 10 ** 6]], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=0)
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers={"content-type":
                                                                                        "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"})  # no model
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert httpx.get(server.url + "/v1/nothing").status_code == 404


def test_a_full_queue_answers_429(model_dir):
    gate = threading.Event()
    state, core = scripted_state(model_dir, "one two three", gate, max_num_seqs=1, max_queue=0)
    with serving(state) as s:
        c = s.client()
        first = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], stream=True)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "y"}])
        assert e.value.status_code == 429
        gate.set()
        assert "".join(ch.choices[0].delta.content or "" for ch in first) == "one two three"
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "y"}])
        assert r.choices[0].message.content == "one two three"


def test_a_client_that_disconnects_aborts_its_request(model_dir):
    state, core = scripted_state(model_dir, " ".join(["word"] * 100))
    with serving(state) as s:
        stream = s.client().completions.create(model="tiny", prompt="x", max_tokens=100, stream=True)
        next(iter(stream))
        stream.close()
        deadline = time.time() + 5
        while not core.aborted and time.time() < deadline:
            time.sleep(0.02)
        assert core.aborted and not core.todo
        assert state.in_flight == 0 and state.backend.counts() == (0, 0)


def test_a_client_that_gives_up_on_a_plain_request_aborts_it(model_dir):
    gate = threading.Event()
    state, core = scripted_state(model_dir, "one two three four", gate)
    with serving(state) as s:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 4}, timeout=0.5)
        gate.set()
        deadline = time.time() + 5
        while not core.aborted and time.time() < deadline:
            time.sleep(0.02)
        assert core.aborted and state.in_flight == 0


def test_the_serve_command_reports_bad_options_in_one_line(model_dir, tmp_path, capsys):
    from alignlab.cli import main

    assert main(["serve", str(model_dir), "--lora", "no-equals-sign"]) == 2
    assert "--lora 'no-equals-sign': give NAME=DIR" in capsys.readouterr().err
    assert main(["serve", str(model_dir), "--api-keys", str(tmp_path / "none.json")]) == 2
    assert "none.json: no such file" in capsys.readouterr().err
    (tmp_path / "keys.json").write_text('{"k": "tiny"}')
    assert main(["serve", str(model_dir), "--api-keys", str(tmp_path / "keys.json")]) == 2
    assert "expected" in capsys.readouterr().err
    assert main(["serve", str(model_dir), "--block-size", "0"]) == 2
    assert "block_size must be a positive integer" in capsys.readouterr().err


def test_block_size_and_token_budget_reach_the_engine(model_dir):
    """--block-size and --max-num-batched-tokens set the continuous engine's pool and step budget; greedy replies
    are the same with 8-token blocks."""
    model, tok = load(model_dir)
    state = build_state(model, tok, model_names=["tiny"], engine="continuous", block_size=8, max_num_batched_tokens=64)
    engine = state.backend.core
    assert engine.cache.block_size == 8 and engine.scheduler.max_num_batched_tokens == 64
    want = Engine(model, tok).generate([[5, 6, 7]], greedy(12))[0].token_ids
    assert engine.generate([[5, 6, 7]], greedy(12))[0].token_ids == want


# --- tools ---------------------------------------------------------------------------------------------------------

CALCULATOR = {"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic",
                                               "parameters": {"type": "object",
                                                              "properties": {"expression": {"type": "string"}},
                                                              "required": ["expression"]},
                                               "strict": True}}
CALL = 'Let me compute.<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>'


def test_tool_calls_are_parsed_from_hermes_blocks(model_dir):
    state, core = scripted_state(model_dir, CALL)
    with serving(state) as s:
        c = s.client()
        messages = [{"role": "user", "content": "What is 2+3?"}]
        r = c.chat.completions.create(model="tiny", messages=messages, tools=[CALCULATOR])
        m = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and m.content == "Let me compute."
        (call,) = m.tool_calls
        assert call.type == "function" and call.function.name == "calculator"
        assert json.loads(call.function.arguments) == {"expression": "2+3"}
        prompt = state.tokenizer.decode(next(iter(core.prompts.values())))
        assert "calculator(expression)" in prompt  # the tools went through the chat template

        chunks = list(c.chat.completions.create(model="tiny", messages=messages, tools=[CALCULATOR], stream=True))
        content = "".join(ch.choices[0].delta.content or "" for ch in chunks)
        deltas = [t for ch in chunks for t in ch.choices[0].delta.tool_calls or []]
        assert content == "Let me compute." and chunks[-1].choices[0].finish_reason == "tool_calls"
        assert [(d.index, d.function.name) for d in deltas] == [(0, "calculator")] and deltas[0].id
        assert json.loads(deltas[0].function.arguments) == {"expression": "2+3"}

        # the conversation goes on: the call and its result render through the template
        follow = messages + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                             {"role": "tool", "tool_call_id": call.id, "content": "5"}]
        r = c.chat.completions.create(model="tiny", messages=follow, tools=[CALCULATOR], tool_choice="none")
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="tiny", messages=messages, tools=[CALCULATOR],
                                      tool_choice={"type": "function", "function": {"name": "other"}})


def test_a_named_tool_choice_forces_the_call(model_dir):
    state, core = scripted_state(model_dir, '{"expression": "7*6"}}</tool_call>')
    with serving(state) as s:
        r = s.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "7 times 6?"}], tools=[CALCULATOR],
            tool_choice={"type": "function", "function": {"name": "calculator"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "calculator" and json.loads(call.function.arguments) == {"expression": "7*6"}
    prompt = state.tokenizer.decode(next(iter(core.prompts.values())))
    assert prompt.endswith('<tool_call>\n{"name": "calculator", "arguments": ')


# --- tenants -------------------------------------------------------------------------------------------------------

def test_tenants_see_and_use_only_their_own(model_dir, adapter_dirs, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"k-admin": ["*"], "k-a": ["tiny", "a"], "k-c": ["c"]}))
    model, tok = load(model_dir)
    state = build_state(model, tok, model_names=["tiny"], api_keys=str(keys),
                        loras={"a": str(adapter_dirs["a"]), "c": str(adapter_dirs["c"])})
    with serving(state) as s:
        assert {m.id for m in s.client("k-a").models.list().data} == {"tiny", "a"}
        assert {m.id for m in s.client("k-c").models.list().data} == {"c"}
        assert {m.id for m in s.client("k-admin").models.list().data} == {"tiny", "a", "c"}
        assert s.client("k-c").completions.create(model="c", prompt="x", max_tokens=2).choices
        with pytest.raises(openai.NotFoundError) as theirs:
            s.client("k-a").completions.create(model="c", prompt="x", max_tokens=2)
        with pytest.raises(openai.NotFoundError) as missing:
            s.client("k-a").completions.create(model="zzz", prompt="x", max_tokens=2)
        assert theirs.value.body == {**missing.value.body, "message": "The model `c` does not exist."}
        with pytest.raises(openai.NotFoundError):
            s.client("k-c").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
        for key in ("wrong", None):
            with pytest.raises(openai.AuthenticationError):
                (s.client(key) if key else s.client("x", default_headers={"Authorization": ""})).models.list()
        body = {"lora_name": "b", "lora_path": str(adapter_dirs["b"])}
        r = httpx.post(s.url + "/v1/load_lora_adapter", json=body, headers={"Authorization": "Bearer k-a"})
        assert r.status_code == 403 and r.json()["error"]["message"]
        r = httpx.post(s.url + "/v1/load_lora_adapter", json=body, headers={"Authorization": "Bearer k-admin"})
        assert r.status_code == 200
        assert "b" not in {m.id for m in s.client("k-a").models.list().data}
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200


# --- metrics and the tokenizer endpoints ---------------------------------------------------------------------------

def test_metrics_and_tokenizer_endpoints(server, reference):
    _, _, tok = reference
    server.client().completions.create(model="a", prompt="Tom", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    assert 'alignlab_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert 'alignlab_model_requests_total{model="a"}' in text
    for name in ("prompt_tokens_total", "generation_tokens_total", "requests_waiting", "requests_running"):
        assert f"\nalignlab_{name} " in text
    if hasattr(server.state.backend.core, "stats"):  # the paged engine: its blocks, all back in the pool
        for _ in range(50):
            text = httpx.get(server.url + "/metrics").text
            if "\nalignlab_kv_blocks_in_use 0\n" in text:
                break
            time.sleep(0.02)
        assert "\nalignlab_kv_blocks_in_use 0\n" in text and "\nalignlab_kv_blocks_total " in text
    r = httpx.post(server.url + "/tokenize", json={"prompt": "Tom has", "add_special_tokens": False}).json()
    assert r["tokens"] == tok.encode("Tom has", add_special_tokens=False) and r["count"] == len(r["tokens"])
    assert httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "Tom has"}
    r = httpx.post(server.url + "/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert r["tokens"] == tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                                  tokenize=True)
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == tok.eos_token and info["model_max_length"] == MAX_LEN
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text
