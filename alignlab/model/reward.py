"""Reward models: a transformer that reads a whole conversation and returns one number, how good it is.

    h = backbone.hidden_states(ids)          [B, T, dim]   the final normed hidden states of a CausalLM
    r = score(h[b, last_b])                  [B]           score: Linear(dim, 1, bias=False)

last_b is the position of the last real token of row b: the rightmost position whose attention_mask is 1
(alignlab pads on the right, so it is length_b - 1). Causal attention lets that one hidden state see the
whole sequence, so it summarises the prompt and the reply; nothing after it changes it. This is
transformers' `LlamaForSequenceClassification` with `num_labels=1` (Ziegler et al. 2019 arXiv:1909.08593,
Stiennon et al. 2020 arXiv:2009.01325, Ouyang et al. 2022 InstructGPT arXiv:2203.02155: an SFT model with
its unembedding replaced by a scalar head). A reward model is trained on preference pairs with the
Bradley-Terry loss (Bradley & Terry 1952), -log sigmoid(r_chosen - r_rejected); see recipes/reward_model.py.

A process reward model is the same network read at more than one position: `token_rewards` gives the head at
every token, and `score_positions` picks the tokens that end each worked step (`reply_positions` maps a
character offset in the reply to its token); see recipes/prm.py.

The language-model head of the backbone is dropped: a reward model never predicts tokens.

transformers finds the last token differently: the rightmost token that is not `config.pad_token_id`. The two
agree whenever a sequence does not end with the pad id, which `reward_input_ids` ensures (when pad == eos a
trailing eos is dropped: by causality that leaves the reward transformers computes for the whole sequence).

Saved in Hugging Face format as `<Arch>ForSequenceClassification` (LlamaForSequenceClassification,
Qwen2ForSequenceClassification, ...; GPT2ForSequenceClassification for gpt2): config.json with
`num_labels` 1 and `pad_token_id` set, tensors `model.*` (the backbone, GPT-2: `transformer.*`) and
`score.weight`, so `AutoModelForSequenceClassification.from_pretrained(dir)` gives the same rewards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from alignlab.model.config import ModelConfig
from alignlab.model.hf import (
    CheckpointError,
    auto_dtype,
    config_to_hf,
    gpt2_to_ours,
    load_model,
    ours_to_gpt2,
    read_config,
    read_weights,
    resolve_model_dir,
)
from alignlab.model.transformer import CausalLM

SEQUENCE_CLASSIFICATION = {"llama": "LlamaForSequenceClassification",
                           "mistral": "MistralForSequenceClassification",
                           "qwen2": "Qwen2ForSequenceClassification", "qwen3": "Qwen3ForSequenceClassification",
                           "gpt2": "GPT2ForSequenceClassification"}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's last real token: the rightmost position with attention_mask 1 (length - 1 for
    right padding; T - 1 for left padding)."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (no padding at all counts too)."""
    lengths = attention_mask.long().sum(-1, keepdim=True)
    return bool((attention_mask.long() == (torch.arange(attention_mask.shape[1], device=lengths.device) < lengths)
                 ).all())


class RewardModel(nn.Module):
    """A CausalLM backbone (without its language-model head) and a scalar head: ids in, one reward per row."""

    def __init__(self, config: ModelConfig, backbone: CausalLM | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else CausalLM(config)
        del self.backbone.lm_head  # vocab x dim weights a reward model never uses
        self.score = nn.Linear(config.dim, 1, bias=False)
        nn.init.normal_(self.score.weight, std=config.init_std)  # as transformers: N(0, initializer_range^2)
        p = next(self.backbone.parameters())
        self.score.to(device=p.device, dtype=p.dtype)

    @classmethod
    def from_causal_lm(cls, model_dir, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None) -> RewardModel:
        """A reward model whose backbone is the language model in `model_dir` (a Hugging Face directory or Hub id,
        usually the SFT model) and whose head is new: small random weights, so every reward starts near 0."""
        return cls.from_backbone(load_model(model_dir, device=device, dtype=dtype))

    @classmethod
    def from_backbone(cls, model: CausalLM) -> RewardModel:
        return cls(model.config, backbone=model)

    # gradient checkpointing is the backbone's switch (the Trainer sets it on the model it is given)
    @property
    def gradient_checkpointing(self) -> bool:
        return self.backbone.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.backbone.gradient_checkpointing = on

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        # Right padding never reaches a real token through causal attention, and positions count from 0 either
        # way, so the backbone runs without the mask (its fast path); other padding passes the mask on.
        if attention_mask is not None and is_right_padded(attention_mask):
            attention_mask = None
        return self.backbone.hidden_states(input_ids, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards [B] for input_ids [B, T]: the head at each row's last real token (attention_mask [B, T]: 1 for
        real tokens, 0 for padding; None means no padding, the reward is at position T - 1)."""
        h = self._hidden(input_ids, attention_mask)
        if attention_mask is None:
            last = h[:, -1]
        else:
            last = h[torch.arange(h.shape[0], device=h.device), last_token_index(attention_mask)]
        return self.score(last).squeeze(-1)

    def token_rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head at every position, [B, T] (a value model's per-token estimates, as PPO's critic uses)."""
        return self.score(self._hidden(input_ids, attention_mask)).squeeze(-1)


# --- Hugging Face directories ------------------------------------------------------------------------


def save_reward_model(model: RewardModel, out_dir, tokenizer=None, meta: dict | None = None,
                      pad_token_id: int | None = None) -> Path:
    """Write a `<Arch>ForSequenceClassification` directory: config.json (num_labels 1, pad_token_id), model.safetensors
    (backbone + score.weight), and the tokenizer and alignlab.json when given. `pad_token_id` defaults to the
    model config's, then the tokenizer's pad (or eos) id; transformers needs one to find the last token."""
    from safetensors.torch import save_file

    c = model.config
    if pad_token_id is None:
        pad_token_id = c.pad_token_id if c.pad_token_id is not None else (
            reward_pad_id(tokenizer) if tokenizer is not None else None)
    if pad_token_id is None:
        raise ValueError("save_reward_model: no pad_token_id (set model.config.pad_token_id or pass a tokenizer): "
                         "transformers' sequence classifiers locate the last token with it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.backbone.state_dict().items()}
    if c.arch == "gpt2":
        sd = ours_to_gpt2(sd, c)
    sd["score.weight"] = model.score.weight.detach().contiguous().cpu()
    dtype = str(model.score.weight.dtype).removeprefix("torch.")
    hf = config_to_hf(c, dtype)
    hf.update(architectures=[SEQUENCE_CLASSIFICATION[c.arch]], pad_token_id=pad_token_id, num_labels=1,
              id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    tmp = out / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(out)
    if meta is not None:
        (out / "alignlab.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_reward_model(name_or_path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                      attn_impl: str | None = None) -> RewardModel:
    """A sequence-classification directory (ours or transformers', num_labels 1) -> RewardModel."""
    model_dir = resolve_model_dir(name_or_path)
    hf, config = read_config(model_dir)
    if hf.get("pad_token_id") is not None:
        config.pad_token_id = hf["pad_token_id"]
    if attn_impl:
        config.attn_impl = attn_impl
    device = torch.device(device)
    dtype = dtype or auto_dtype(hf, device)
    sd = {name: t for name, (t, _) in read_weights(model_dir).items()}
    if "score.weight" not in sd:
        raise CheckpointError(f"{model_dir}: no score.weight, so not a reward model (a language model becomes one "
                              "with RewardModel.from_causal_lm)")
    score = sd.pop("score.weight")
    if tuple(score.shape) != (1, config.dim):
        raise CheckpointError(f"{model_dir}: score.weight has shape {list(score.shape)}, a reward model's is "
                              f"[1, {config.dim}] (num_labels 1)")
    if config.arch == "gpt2":
        sd = gpt2_to_ours(sd, config)
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}

    with torch.device("meta"):
        model = RewardModel(config)
    expected = model.backbone.state_dict()
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise CheckpointError(f"{model_dir}: {what} ({len(missing)} missing, {len(unexpected)} unexpected)")
    for name, t in sd.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{model_dir}: tensor {name} has shape {list(t.shape)}, config.json implies "
                                  f"{list(expected[name].shape)}")
    model.backbone.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()}, assign=True)
    model.score.weight = nn.Parameter(score.to(device=device, dtype=dtype))
    if config.pos == "rope":  # a non-persistent buffer: rebuilt, not loaded
        model.backbone.inv_freq = model.backbone.rope_frequencies(device)
    return model.eval()


# --- scoring text ------------------------------------------------------------------------------------


def reward_pad_id(tokenizer) -> int:
    """The pad id of reward batches: the tokenizer's pad token, else its eos (as trl's RewardTrainer)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; a reward model needs a pad id")
    return pad


def reward_input_ids(tokenizer, prompt, completion, pad_id: int | None = None, tools: list[dict] | None = None,
                     chat_template: str | None = None) -> list[int]:
    """The token ids a reward model reads for (prompt, completion), as trl's RewardTrainer builds them:

    - conversational (message lists; a string completion after a conversational prompt is the assistant's
      reply): prompt + completion rendered with the chat template, no generation prompt;
    - standard (strings): bos (if the tokenizer adds one) + prompt + completion, then eos if it is not there.

    `prompt` may be None or empty (an implicit prompt: the completion holds the whole conversation). Trailing
    `pad_id` tokens are dropped (pad == eos tokenizers): transformers reads the reward at the last token that
    is not the pad id, and by causality the shorter sequence gives that same reward."""
    if isinstance(completion, str) and isinstance(prompt, list):
        completion = [{"role": "assistant", "content": completion}]
    if isinstance(completion, list):
        messages = list(prompt or []) + list(completion)
        ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, chat_template=chat_template)
    else:
        bos = tokenizer.bos_token_id
        ids = [bos] if getattr(tokenizer, "add_bos_token", False) and bos is not None else []
        ids += tokenizer.encode((prompt or "") + completion, add_special_tokens=False)
        ids = ids[1:] if len(ids) > 1 and ids[0] == ids[1] == bos else ids  # the text began with bos itself
        if tokenizer.eos_token_id is not None and ids[-1:] != [tokenizer.eos_token_id]:
            ids.append(tokenizer.eos_token_id)
    pad_id = reward_pad_id(tokenizer) if pad_id is None else pad_id
    while len(ids) > 1 and ids[-1] == pad_id:
        ids = ids[:-1]
    return list(ids)


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [len(rows), longest], padded on the right."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def score(model: RewardModel, tokenizer, prompts: list, completions: list, batch_size: int = 16,
          max_len: int | None = None, chat_template: str | None = None) -> list[float]:
    """The reward of each (prompt, completion) pair, rendered as in training (`reward_input_ids`): prompts and
    completions are strings, or message lists (a string completion after a message-list prompt is the assistant's
    reply). Longer than `max_len` tokens: the start is cut, so the reward still reads the end of the reply.
    For best-of-n sampling and for the reward of RL rollouts."""
    if len(prompts) != len(completions):
        raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else reward_pad_id(tokenizer)
    rows = [reward_input_ids(tokenizer, p, c, pad_id, chat_template=chat_template)
            for p, c in zip(prompts, completions)]
    if max_len is not None:
        rows = [r[-max_len:] for r in rows]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rewards: list[float] = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_right(rows[i:i + batch_size], pad_id)
        rewards += model(ids.to(device), mask.to(device)).float().tolist()
    model.train(was_training)
    return rewards


def reply_positions(tokenizer, ids: list[int], reply: str, char_ends: list[int]) -> list[int]:
    """The position in `ids` (a prompt and `reply` rendered by `reward_input_ids`) of the token that holds the
    character just before each offset in `char_ends` (offsets into the reply): where a process reward model reads
    the step that ends there. Found by decoding prefixes of ids, so it holds for any tokenizer and template."""
    text = tokenizer.decode(ids)
    start = text.rfind(reply)
    if start < 0:
        raise ValueError(f"reply_positions: the reply is not in the decoded ids: {reply[:60]!r}")
    lengths = [len(tokenizer.decode(ids[:k + 1])) for k in range(len(ids))]  # characters up to each token
    positions, k = [], 0
    for end in char_ends:
        if not 0 < end <= len(reply):
            raise ValueError(f"reply_positions: offset {end} is outside the reply (length {len(reply)})")
        while lengths[k] < start + end:
            k += 1
        positions.append(k)
    return positions


@torch.no_grad()
def score_positions(model: RewardModel, tokenizer, prompts: list, completions: list, char_ends: list[list[int]],
                    batch_size: int = 16) -> list[list[float]]:
    """The head's score (a logit) at the token ending each offset of `char_ends` in each completion: a process
    reward model's step scores. Rendered as in training (`reward_input_ids`); [] for a completion without offsets."""
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else reward_pad_id(tokenizer)
    rows = [reward_input_ids(tokenizer, p, c, pad_id) for p, c in zip(prompts, completions)]
    where = [reply_positions(tokenizer, r, c, e) for r, c, e in zip(rows, completions, char_ends)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_right(rows[i:i + batch_size], pad_id)
        scores = model.token_rewards(ids.to(device), mask.to(device)).float().cpu()  # [b, T]
        out += [scores[j, pos].tolist() for j, pos in enumerate(where[i:i + batch_size])]
    model.train(was_training)
    return out
