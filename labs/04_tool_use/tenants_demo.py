"""Tenant isolation with `alignlab serve --api-keys`: two tenants, two private adapters, one admin.

    python labs/04_tool_use/tenants_demo.py            # about 15 s on a laptop CPU

It saves a tiny random Llama (TinyWorld's tokenizer) and two PEFT adapters in a temporary directory, writes a
key file, starts the real server on a free port,

    alignlab serve DIR/base --served-model-name base --lora a-math=DIR/a-math --lora b-chat=DIR/b-chat \\
        --api-keys DIR/keys.json --port PORT

and sends each request below with httpx, printing the curl command that sends the same, the HTTP status and the
answer. The `openai` client then does the same for tenant A. The server is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from alignlab.data.world import TinyWorld
from alignlab.lora import LoraConfig, apply_lora
from alignlab.lora.peft_io import save_adapter
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model

KEYS = {"sk-admin": ["*"], "sk-team-a": ["base", "a-math"], "sk-team-b": ["b-chat"]}


def build(root: Path) -> Path:
    tok = TinyWorld(seed=0, size="quick").tokenizer()
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=128,
                            eos_token_id=tok.eos_token_id))
    base = save_model(model, root / "base", tokenizer=tok)
    for seed, name in enumerate(["a-math", "b-chat"], 1):
        torch.manual_seed(seed)
        lora = apply_lora(load_model(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
        save_adapter(lora, root / name)
    (root / "keys.json").write_text(json.dumps(KEYS, indent=1))
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def show(method: str, url: str, key: str | None, body: dict | None = None):
    curl = f"curl -s {url}" if method == "GET" else f"curl -s {url} -H 'Content-Type: application/json'"
    if key:
        curl += f" -H 'Authorization: Bearer {key}'"
    if body is not None:
        curl += f" -d '{json.dumps(body)}'"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.request(method, url, json=body, headers=headers, timeout=30)
    try:
        data = r.json()
    except ValueError:  # /v1/load_lora_adapter answers in plain text, as vLLM's does
        print(f"$ {curl}\n  -> {r.status_code} {r.text}")
        return r
    if "data" in data and isinstance(data["data"], list):
        data = {"models": [m["id"] for m in data["data"]]}
    elif "choices" in data:
        data = {"text": data["choices"][0]["text"]}
    elif "error" in data:
        data = {"error": {k: data["error"][k] for k in ("message", "type")}}
    print(f"$ {curl}\n  -> {r.status_code} {json.dumps(data, ensure_ascii=False)}")
    return r


def main():
    root = Path(tempfile.mkdtemp(prefix="lab04-tenants-"))
    server = None
    try:
        base = build(root)
        port = free_port()
        cmd = [sys.executable, "-c", "from alignlab.cli import main; main()", "serve", str(base),
               "--served-model-name", "base", "--lora", f"a-math={root / 'a-math'}",
               "--lora", f"b-chat={root / 'b-chat'}", "--api-keys", str(root / "keys.json"), "--port", str(port)]
        print("key file:", json.dumps(KEYS))
        print("$ alignlab serve DIR/base --served-model-name base --lora a-math=DIR/a-math --lora b-chat=DIR/b-chat "
              f"--api-keys keys.json --port {port}\n")
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited:\n{server.stderr.read().decode()}") from None
            time.sleep(0.1)
        v1 = url + "/v1"
        print("# each tenant sees only its own models")
        show("GET", v1 + "/models", "sk-team-a")
        show("GET", v1 + "/models", "sk-team-b")
        show("GET", v1 + "/models", "sk-admin")
        print("# tenant A uses its adapter (a random model: its text is noise)")
        show("POST", v1 + "/completions", "sk-team-a", {"model": "a-math", "prompt": "Tom has", "max_tokens": 4,
                                                       "temperature": 0})
        print("# tenant B asks for tenant A's adapter: the same 404 as a name that does not exist")
        show("POST", v1 + "/completions", "sk-team-b", {"model": "a-math", "prompt": "Tom has", "max_tokens": 4})
        show("POST", v1 + "/completions", "sk-team-b", {"model": "no-such-model", "prompt": "Tom has", "max_tokens": 4})
        print("# no key, a wrong key")
        show("GET", v1 + "/models", None)
        show("GET", v1 + "/models", "sk-guess")
        print("# loading an adapter needs the admin key")
        body = {"lora_name": "c-new", "lora_path": str(root / "a-math")}
        show("POST", v1 + "/load_lora_adapter", "sk-team-a", body)
        show("POST", v1 + "/load_lora_adapter", "sk-admin", body)
        show("GET", v1 + "/models", "sk-team-a")

        print("\n# the same as tenant A with the openai client")
        import openai

        client = openai.OpenAI(base_url=v1, api_key="sk-team-a", max_retries=0)
        print(">>> [m.id for m in client.models.list().data]")
        print([m.id for m in client.models.list().data])
        try:
            client.completions.create(model="b-chat", prompt="Tom has", max_tokens=4)
        except openai.NotFoundError as e:
            print(">>> client.completions.create(model='b-chat', ...)")
            print(f"openai.NotFoundError {e.status_code}: {e.body['message']}")
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
