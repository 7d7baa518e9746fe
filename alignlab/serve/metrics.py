"""The server's counters, written in Prometheus' text exposition format for GET /metrics.

    alignlab_requests_total{endpoint="chat",status="200"}   requests answered, by endpoint and HTTP status
    alignlab_model_requests_total{model="a-math"}           requests per model or adapter
    alignlab_prompt_tokens_total                            prompt tokens processed
    alignlab_generation_tokens_total                        tokens generated
    alignlab_requests_running                               sequences that have produced a token
    alignlab_requests_waiting                               sequences queued or in prefill (no token yet)
    alignlab_requests_in_flight                             sequences admitted (what --max-queue limits)
    alignlab_kv_blocks_in_use / _total / _cached            the paged KV cache's blocks (continuous engine only)
    alignlab_engine_preemptions, alignlab_prefix_cache_hit_tokens    the continuous engine's counters
    alignlab_adapters_loaded                                LoRA adapters the server knows
"""

from __future__ import annotations

import threading
from collections import Counter


def _labels(**kw) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in kw.items())
    return "{" + inner + "}" if inner else ""


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.per_model: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[endpoint, status] += 1

    def model(self, name: str) -> None:
        with self._lock:
            self.per_model[name] += 1

    def tokens(self, prompt: int, generated: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generation_tokens += generated

    def render(self, gauges: dict[str, tuple[str, float | None]]) -> str:
        """The exposition text; `gauges` maps a name to (help, value), None values left out."""
        with self._lock:
            lines = ["# HELP alignlab_requests_total HTTP requests answered, by endpoint and status",
                     "# TYPE alignlab_requests_total counter"]
            lines += [f"alignlab_requests_total{_labels(endpoint=e, status=s)} {n}"
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP alignlab_model_requests_total generation requests per model or adapter",
                      "# TYPE alignlab_model_requests_total counter"]
            lines += [f"alignlab_model_requests_total{_labels(model=m)} {n}" for m, n in sorted(self.per_model.items())]
            for name, help_, value in (("prompt_tokens_total", "prompt tokens processed", self.prompt_tokens),
                                       ("generation_tokens_total", "tokens generated", self.generation_tokens)):
                lines += [f"# HELP alignlab_{name} {help_}", f"# TYPE alignlab_{name} counter",
                          f"alignlab_{name} {value}"]
        for name, (help_, value) in gauges.items():
            if value is not None:
                lines += [f"# HELP alignlab_{name} {help_}", f"# TYPE alignlab_{name} gauge",
                          f"alignlab_{name} {value:g}"]
        return "\n".join(lines) + "\n"
