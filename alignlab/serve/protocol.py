"""The OpenAI API's request bodies and error body, as pydantic models.

Fields the server does not use (user, logit_bias, response_format, parallel_tool_calls, a tool's `strict`) are
accepted and ignored, as clients send them by default; a field it cannot honour with a value that matters
(frequency_penalty != 0, suffix, best_of > n) is a 400. Beside OpenAI's fields, vLLM's sampling extras:
top_k, min_p, repetition_penalty, ignore_eos.

An error answers with OpenAI's body, which the official client turns into BadRequestError (400),
AuthenticationError (401), NotFoundError (404), RateLimitError (429), ...:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "NotFoundError", 429: "rate_limit_error", 500: "internal_server_error",
               503: "service_unavailable"}


class APIError(Exception):
    """A request the server answers with an HTTP error and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code if code is not None else status}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send more than we use


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """The sampling fields both endpoints share (OpenAI's, then vLLM's extras)."""

    model: str
    temperature: float | None = None  # None: 1.0, OpenAI's default
    top_p: float = 1.0
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    top_k: int = 0  # vLLM: 0 or -1 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    return_tokens_as_token_ids: bool = False  # vLLM's: log-prob tokens spelled "token_id:<id>" (exact ids for RL)


class FunctionCall(_Body):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Body):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Function(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Body):
    type: Literal["function"] = "function"
    function: Function


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None  # None: as many as the context leaves
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None  # "none" | "auto" | "required" | {"type": "function", ...}
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


class LoadLoraRequest(_Body):
    lora_name: str
    lora_path: str


class UnloadLoraRequest(_Body):
    lora_name: str
