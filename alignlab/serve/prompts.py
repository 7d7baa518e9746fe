"""Requests to engine inputs: the prompt's token ids (chat template, tools, token-id prompts) and SamplingParams.

A chat request is rendered by the tokenizer's chat template (`apply_chat_template`, with the tools when
tool_choice lets them in) and encoded without added special tokens (the template writes its own); a forced
reply start (tools.tool_mode) is appended. A completion's string prompt is encoded with the tokenizer's special
tokens; a token-id prompt is taken as it is (no BOS added). max_tokens defaults to what the context leaves.
"""

from __future__ import annotations

import contextlib
import json

from jinja2 import TemplateError

from alignlab.errors import UserError
from alignlab.infer import SamplingParams
from alignlab.serve.protocol import APIError


def sampling_params(body, max_tokens: int, seed: int | None, logprobs: bool, top: int) -> SamplingParams:
    if body.frequency_penalty or body.presence_penalty:
        raise APIError(400, "frequency_penalty and presence_penalty are not supported; use repetition_penalty",
                       param="frequency_penalty" if body.frequency_penalty else "presence_penalty")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    kw = dict(max_new_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
              top_p=body.top_p, top_k=max(body.top_k, 0), min_p=body.min_p,
              repetition_penalty=body.repetition_penalty, stop=stop, seed=seed, logprobs=logprobs,
              ignore_eos=body.ignore_eos, top_logprobs=top)
    try:
        params = SamplingParams(**kw)
    except ValueError as e:
        name = str(e).split()[0]
        raise APIError(400, str(e).replace("max_new_tokens", "max_tokens"),
                       param={"max_new_tokens": "max_tokens", "stop strings": "stop"}.get(name, name)) from None
    return params


def max_tokens(asked: int | None, prompt_len: int, max_model_len: int, where: str) -> int:
    """The tokens a request may generate: as asked, or all the context leaves; 400 past the context."""
    room = max_model_len - prompt_len
    if asked is not None and asked < 0:
        raise APIError(400, "max_tokens must be >= 0", param="max_tokens")
    if room <= 0 or (asked is not None and asked > room):
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, you "
                            f"requested {prompt_len + (asked or 0)} tokens ({prompt_len} in the {where}, "
                            f"{asked or 0} in the completion). Please reduce the length of the {where} or "
                            "completion.", param="max_tokens" if room > 0 else where)
    return room if asked is None else asked


def message_dict(m) -> dict:
    """A chat message as templates expect it: text content, tool-call arguments as a dict."""
    d = m.model_dump(exclude_none=True)
    d["role"] = "system" if d["role"] == "developer" else d["role"]
    content = d.get("content")
    if isinstance(content, list):
        d["content"] = "".join(p.get("text", "") for p in content if p.get("type") == "text")
    elif content is None and not d.get("tool_calls"):
        d["content"] = ""
    for call in d.get("tool_calls") or []:
        args = call["function"].get("arguments")
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):
                call["function"]["arguments"] = json.loads(args)
    return d


def chat_prompt(tok, messages, tools, add_generation_prompt: bool, forced: str = "",
                 kwargs: dict | None = None) -> list[int]:
    try:
        text = tok.apply_chat_template([message_dict(m) for m in messages], tools=tools,
                                       add_generation_prompt=add_generation_prompt, **(kwargs or {}))
    except (UserError, TemplateError) as e:
        raise APIError(400, f"chat template: {e}", param="messages") from None
    return tok.encode(text + forced, add_special_tokens=False)


def completion_prompts(tok, vocab_size: int, prompt) -> list[tuple[list[int], str | None]]:
    """(token ids, the text if given as text) of each prompt; ids get no special tokens added."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt")
    out = []
    for p in prompt:
        ids = tok.encode(p, add_special_tokens=True) if isinstance(p, str) else list(p)
        if not ids:
            raise APIError(400, "prompt is empty", param="prompt")
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise APIError(400, f"prompt token ids must be in [0, {vocab_size})", param="prompt")
        out.append((ids, p if isinstance(p, str) else None))
    return out
