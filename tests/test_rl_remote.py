"""GRPO's rollouts through an OpenAI-compatible server (rollout.backend=server) and on the paged engine
(rollout.engine=paged).

The server is alignlab's own, in-process under uvicorn on a free port, over the same tiny random Llama the recipe
tests train (conftest's `base`). Every rollout batch the policy's LoRA adapter must be loaded on the server under a
fresh name (seen through /v1/models), and the server's completions must be the ones local generation draws from
the same policy with the same seeds: the same text, and the same token ids where the server returns ids (vLLM's
return_tokens_as_token_ids, which alignlab serve honours; a server that ignores it is mimicked too, and then the
trainer re-encodes the text).
"""

from __future__ import annotations

import json
import math
import socket
from contextlib import contextmanager

import httpx
import pytest
import torch

from alignlab.errors import ConfigError, UserError
from alignlab.infer import SamplingParams
from alignlab.lora import LoraConfig, apply_lora
from alignlab.model.hf import load_model
from alignlab.recipes.grpo import run
from alignlab.rl.collect import RolloutConfig, prompt_token_ids, rollout_seeds
from alignlab.rl.remote import ServerRollouts, request_body
from alignlab.rl.rollout import generate_rollouts
from alignlab.serve import build_state
from alignlab.serve import responses as serve_responses
from alignlab.text import load_tokenizer

from .test_recipe_grpo import config, metrics
from .test_serve import Server

LOW_IDS = "tests.test_recipe_grpo:low_ids"  # rewards token ids in the lower half of the vocabulary


@pytest.fixture(scope="module")
def prompts(world):
    return world.rl_prompts("train", level=2)[:40], world.rl_prompts("test", level=2)[:6]


@contextmanager
def a_server_without_token_ids():
    """A server that ignores return_tokens_as_token_ids (as some do): log-prob tokens are their decoded strings, so
    the trainer must re-encode the text."""
    decode = serve_responses.Pieces.__call__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serve_responses.Pieces, "__call__",
                   lambda self, i: decode(serve_responses.Pieces(self.tokenizer), i))
        yield


def server_config(tmp_path, base, server, **kw):
    return config(tmp_path, base, method="lora", backend="server", server_url=server.api, server_model="base",
                  **kw)


def watch(monkeypatch, seen: list):
    """Spy on every server rollout: the adapters /v1/models lists right after it, and the local rollout of the same
    policy with the same seeds."""
    original = ServerRollouts.__call__

    def spy(self, policy, tok, prompt_ids, G, params, seeds, pad_id, autocast=None):
        rollout = original(self, policy, tok, prompt_ids, G, params, seeds, pad_id)
        local = generate_rollouts(policy, tok, prompt_ids, G, params, seeds, pad_id)
        seen.append({"models": self.models(), "loaded": self.loaded, "dir": self.adapter_dir, "server": rollout,
                     "local": local, "retokenized": self.warned, "args": (prompt_ids, G, params, seeds, pad_id)})
        return rollout

    monkeypatch.setattr(ServerRollouts, "__call__", spy)


@pytest.mark.parametrize("ids", [True, False], ids=["token-ids", "token-strings"])
def test_grpo_rollouts_through_the_server_equal_local_ones(tmp_path, base, prompts, server, monkeypatch, ids, capsys):
    seen: list[dict] = []
    watch(monkeypatch, seen)
    cfg = server_config(tmp_path, base, server, reward_funcs={LOW_IDS: 1.0}, eval_prompts=0,
                        train={"max_steps": 3, "lr": 3e-2})
    if ids:
        result = run(cfg, train_records=prompts[0], val_records=[])
    else:
        with a_server_without_token_ids():
            result = run(cfg, train_records=prompts[0], val_records=[])
    assert result["status"] == "finished" and result["step"] == 3
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert len(steps) == 3 and all(math.isfinite(r["loss"]) and r["num_generated_tokens"] > 0 for r in steps)

    # a fresh adapter on the server every rollout batch, the previous one gone
    names = [s["loaded"] for s in seen]
    assert len(seen) == 3 and len(set(names)) == 3
    for s in seen:
        assert sorted(s["models"]) == sorted(["base", s["loaded"]]), s["models"]
    assert served(server) == ["base"]  # the last one unloaded at the end
    assert not seen[0]["dir"].exists()  # and the temporary adapter directory removed

    # the same completions as local generation from the same policy and seeds, at every step
    for s in seen:
        assert s["server"].texts == s["local"].texts
        assert torch.equal(s["server"].truncated, s["local"].truncated)
        if ids:
            assert not s["retokenized"]
            for key in ("input_ids", "completion_ids", "completion_mask", "prompt_lens", "prompt_index"):
                assert torch.equal(getattr(s["server"], key), getattr(s["local"], key)), key
        else:
            assert s["retokenized"]
    assert ("returned token strings, not token ids" in capsys.readouterr().out) == (not ids)
    # and the adapter mattered: by the last step the base model samples something else from the same seeds
    assert any(r["grad_norm"] > 0 for r in steps)
    tok = load_tokenizer(base)
    assert generate_rollouts(load_model(base), tok, *seen[-1]["args"]).texts != seen[-1]["server"].texts


def served(server) -> list[str]:
    """The ids the server's /v1/models lists."""
    return [d["id"] for d in httpx.get(server.api + "/models").json()["data"]]


def test_request_body_and_seeds():
    """One request per prompt with n = G and the group's first seed (alignlab serve seeds choice j with seed + j);
    G requests with n = 1 where the seeds are not consecutive."""
    p = SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=0)
    body = request_body("a", [1, 2, 3], 4, 17, p)
    assert body == {"model": "a", "prompt": [1, 2, 3], "n": 4, "seed": 17, "max_tokens": 8, "temperature": 0.7,
                    "top_p": 0.9, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": False,
                    "logprobs": 0, "return_tokens_as_token_ids": True}
    seeds = rollout_seeds(0, 5, 8)
    assert seeds == list(range(seeds[0], seeds[0] + 8))


def test_server_seeds_not_consecutive_go_one_request_each(tmp_path, base, world, server):
    """Scattered seeds: G requests of n = 1, the same completions as local generation."""
    tok = load_tokenizer(base)
    policy = apply_lora(load_model(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     init_lora_weights=False))
    ids = [prompt_token_ids(tok, r) for r in world.rl_prompts("train", level=2)[:2]]
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    seeds = [5, 900, 31, 7, 1234, 2, 77, 8]
    with ServerRollouts(server.api, "base", tok) as remote:
        got = remote(policy, tok, ids, 4, params, seeds, tok.padding_id)
        assert remote.loaded in served(server)
    want = generate_rollouts(policy, tok, ids, 4, params, seeds, tok.padding_id)
    assert torch.equal(got.completion_ids, want.completion_ids) and got.texts == want.texts
    assert served(server) == ["base"]


def test_server_errors_name_the_url_and_the_message(base, server):
    tok = load_tokenizer(base)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()  # nobody listens there now
    with pytest.raises(UserError, match=rf"{down}/models: no answer from the server .*rollout.server_url"):
        ServerRollouts(down, "base", tok)
    with pytest.raises(UserError, match=r"does not serve 'nope' \(rollout.server_model\); it serves base"):
        ServerRollouts(server.api, "nope", tok)
    # a 4xx: alignlab serve refuses DoRA adapters in mixed batches
    dora = apply_lora(load_model(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    with ServerRollouts(server.api, "base", tok) as remote:
        with pytest.raises(UserError, match=rf"{server.api}/load_lora_adapter answered 400: .*DoRA"):
            remote.push(dora)


def test_tenants_keys_reach_the_server(tmp_path, base):
    """rollout.server_api_key goes out as a bearer token: a tenant's key may sample but not load adapters."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"admin-key": ["*"], "user-key": ["base"]}))
    model = load_model(base)
    model.requires_grad_(False)
    tok = load_tokenizer(base)
    s = Server(build_state(model, tok, model_names=["base"], api_keys=str(keys)))
    policy = apply_lora(load_model(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    try:
        with pytest.raises(UserError, match=r"/models answered 401"):
            ServerRollouts(s.api, "base", tok)
        with ServerRollouts(s.api, "base", tok, api_key="user-key") as remote:
            with pytest.raises(UserError, match=r"/load_lora_adapter answered 403"):
                remote.push(policy)
        with ServerRollouts(s.api, "base", tok, api_key="admin-key") as remote:
            name = remote.push(policy)
            assert name in remote.models()
    finally:
        s.stop()


def test_config_checks(tmp_path, base, server):
    with pytest.raises(ConfigError, match="needs method=lora"):
        run(config(tmp_path, base, backend="server", server_url=server.api, server_model="base"))
    with pytest.raises(ConfigError, match="rollout.server_url"):
        run(config(tmp_path, base, method="lora", backend="server", server_model="base"))
    with pytest.raises(ConfigError, match="rollout.server_model"):
        run(config(tmp_path, base, method="lora", backend="server", server_url=server.api))
    with pytest.raises(ConfigError, match="rollout.backend must be local or server"):
        RolloutConfig(backend="vllm").check("lora")
    with pytest.raises(ConfigError, match="rollout.engine must be one of static, paged"):
        RolloutConfig(engine="dynamic").check()
    with pytest.raises(ConfigError, match="rolls out locally only"):  # PPO checks without a method
        RolloutConfig(backend="server", server_url=server.api, server_model="base").check()


# --- local rollouts on the paged engine ------------------------------------------------------------------------------

def test_paged_and_static_rollouts_are_token_identical(base, world):
    """Seeded sampling is batch-independent in both engines: the same seeds, the same rollout; with an adapter and
    ragged prompts, completions that stop early (EOS) and ones cut by the length limit."""
    tok = load_tokenizer(base)
    torch.manual_seed(0)
    policy = apply_lora(load_model(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     init_lora_weights=False))
    ids = [prompt_token_ids(tok, r) for r in world.rl_prompts("train", level=2)[:3]]
    ids[1] = ids[1][:-5]
    for params in (SamplingParams(max_new_tokens=20, temperature=1.0), SamplingParams(max_new_tokens=12,
                                                                                      temperature=0.8, top_k=50,
                                                                                      top_p=0.9)):
        seeds = rollout_seeds(3, 1, 3 * 4)
        a = generate_rollouts(policy, tok, ids, 4, params, seeds, tok.padding_id, engine="static")
        b = generate_rollouts(policy, tok, ids, 4, params, seeds, tok.padding_id, engine="paged")
        for key, value in a.tensors().items():
            assert torch.equal(value, b.tensors()[key]), key
        assert a.texts == b.texts
    with pytest.raises(ValueError, match="engine must be one of static, paged"):
        generate_rollouts(policy, tok, ids, 4, params, seeds, tok.padding_id, engine="dynamic")


def test_grpo_on_the_paged_engine_logs_what_the_static_engine_does(tmp_path, base, prompts):
    kw = dict(train={"max_steps": 2, "eval_every": 0, "save_every": 0}, eval_prompts=0)
    for engine in ("static", "paged"):
        run(config(tmp_path, base, name=engine, engine=engine, **kw), train_records=prompts[0], val_records=[])
    drop = ("elapsed_s", "tokens_per_s", "rollout_s", "rollout_tokens_per_s")
    a, b = ([{k: v for k, v in r.items() if k not in drop} for r in metrics(tmp_path, name) if "loss" in r]
            for name in ("static", "paged"))
    assert len(a) == 2 and a == b
