"""Serving: an OpenAI-compatible HTTP server (FastAPI) over the engine, with LoRA adapters and tenants.

    alignlab serve runs/sft/model --lora math=runs/lora-math --api-keys keys.json --port 8000

    app.py        the routes: /v1/models, /v1/completions, /v1/chat/completions, adapters, tokenizer, metrics
    protocol.py   the request bodies and OpenAI's error body
    prompts.py    a request's token ids (chat template, tools) and SamplingParams
    responses.py  the response bodies: choices, log-probs, usage, text as it streams
    stream.py     streamed responses: server-sent events
    backend.py    the engine thread (and StaticEngineCore, the static engine behind the same interface)
    tools.py      tool calls: tool_choice, Hermes <tool_call> blocks parsed into tool_calls
    tenants.py    API keys and the models each may use
    metrics.py    Prometheus counters
    server.py     build_state() and serve(): the pieces put together, then uvicorn
    static/       the chat page served at /

Only this layer imports the web stack (fastapi, uvicorn); the library below stays free of it.
"""

from alignlab.serve.app import ServerState, create_app
from alignlab.serve.backend import Backend, StaticEngineCore
from alignlab.serve.server import build_state, serve

__all__ = ["Backend", "ServerState", "StaticEngineCore", "build_state", "create_app", "serve"]
