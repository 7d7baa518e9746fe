"""Putting a server together: the engine, the adapters, the tenants, the app; then uvicorn.

    state = build_state(model, tokenizer, model_names=["base"], loras={"a": "adapters/a"})
    uvicorn.run(create_app(state), host="127.0.0.1", port=8000)        # what serve() does

Shutdown (SIGTERM or Ctrl-C): uvicorn stops accepting connections and waits for the requests in flight, then
the app's lifespan stops the engine thread, which finishes whatever is still running first.
"""

from __future__ import annotations

from alignlab.errors import ConfigError
from alignlab.serve.app import ServerState, create_app
from alignlab.serve.backend import Backend, make_core
from alignlab.serve.tenants import Tenants


def make_adapters(model, max_loras: int = 8, max_cpu_loras: int = 64):
    """A MultiLora over the model, or None where adapters cannot be served (alignlab's GPT-2)."""
    from alignlab.lora.multi import MultiLora

    try:
        return MultiLora(model, max_loras=max_loras, max_cpu_loras=max_cpu_loras)
    except ConfigError:
        return None


def build_state(model, tokenizer, *, model_names: list[str], model_path: str = "", loras: dict[str, str] | None = None,
                api_keys: str | None = None, max_num_seqs: int = 64, max_queue: int | None = None,
                engine: str = "auto", max_loras: int = 8, core=None, draft_model=None,
                num_speculative_tokens: int = 0, block_size: int = 16,
                max_num_batched_tokens: int = 512) -> ServerState:
    """The server's state. engine: "continuous" (LLMEngine), "static" (StaticEngineCore) or "auto"; `core`
    replaces the engine altogether (tests drive a scripted one). A draft_model turns on speculative decoding
    (num_speculative_tokens guesses a round) on the static engine: continuous batching is off in that mode."""
    loras = loras or {}
    tenants = Tenants.from_file(api_keys)
    if not model_names:
        raise ConfigError("give the model at least one served name")
    clash = sorted(set(loras) & set(model_names))
    if clash:
        raise ConfigError(f"--lora {clash[0]}: the name is also a served model name")
    adapters = make_adapters(model, max_loras=max_loras) if core is None or loras else None
    if loras and adapters is None:
        raise ConfigError("--lora: this model's architecture cannot serve PEFT adapters")
    for name, path in loras.items():
        adapters.load(name, path)
    if core is None:
        core = make_core(model, tokenizer, adapters, max_num_seqs=max_num_seqs, engine=engine,
                         draft_model=draft_model, num_speculative_tokens=num_speculative_tokens,
                         block_size=block_size, max_num_batched_tokens=max_num_batched_tokens)
    if max_queue is not None and max_queue < 0:
        raise ConfigError("--max-queue must be >= 0")
    return ServerState(
        backend=Backend(core, model, adapters), tokenizer=tokenizer, model_names=list(model_names),
        max_model_len=model.config.max_seq_len, vocab_size=model.config.vocab_size, model_path=model_path,
        adapters=adapters, adapter_paths={n: str(p) for n, p in loras.items()}, tenants=tenants,
        capacity=None if max_queue is None else max_num_seqs + max_queue)


def serve(state: ServerState, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(create_app(state), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)
