"""YAML configs with key=value overrides: every key and type is checked, errors name the file and key."""

from __future__ import annotations

import dataclasses

import pytest

from alignlab.config import ConfigError, load_config, parse_overrides, save_config
from alignlab.recipes.pretrain import PretrainConfig


def test_overrides_parse_as_yaml_values():
    assert parse_overrides(["train.lr=3e-3", "model.dim=128", "train.compile=true", "data.source=a.txt",
                            "init_from=null"]) == {
        "train": {"lr": 0.003, "compile": True}, "model": {"dim": 128}, "data": {"source": "a.txt"},
        "init_from": None}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_file_then_overrides_then_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("out_dir: runs/x\ntrain:\n  lr: 1.0e-3\n  max_steps: 50\nmodel:\n  dim: 64\n")
    cfg = load_config(PretrainConfig, f, ["train.max_steps=7", "model.n_layers=2"])
    assert cfg.out_dir == "runs/x" and cfg.train.lr == 1e-3 and cfg.train.max_steps == 7
    assert cfg.model == {"dim": 64, "n_layers": 2}
    assert cfg.train.warmup_steps == 100 and cfg.block_size == 256  # defaults
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(PretrainConfig, saved) == cfg  # the resolved config reloads to the same thing


def test_unknown_key_names_file_and_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lrr: 1.0e-3\n")
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, f)
    assert str(f) in str(e.value) and "unknown key train.lrr" in str(e.value) and "train.lr" in str(e.value)
    with pytest.raises(ConfigError, match="unknown key blocksize"):
        load_config(PretrainConfig, None, ["blocksize=64"])


def test_wrong_types_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="train.max_steps expects int"):
        load_config(PretrainConfig, None, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match="train.lr expects a number"):
        load_config(PretrainConfig, None, ["train.lr=true"])
    with pytest.raises(ConfigError, match="schedule"):
        load_config(PretrainConfig, None, ["train.schedule=exp"])
    assert load_config(PretrainConfig, None, ["train.lr=1"]).train.lr == 1.0  # an int is a fine float


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(PretrainConfig, bad)


def test_a_key_of_a_nested_block_is_suggested_with_its_section():
    """`num_generations=4` on an RL recipe lives in its rollout: block; the error says where."""
    from alignlab.recipes.grpo import GRPOConfig

    with pytest.raises(ConfigError, match=r"unknown key num_generations \(did you mean rollout.num_generations\?\)"):
        load_config(GRPOConfig, overrides=["num_generations=4"])


def test_a_nested_override_keeps_the_recipes_defaults_for_the_block():
    """train.max_steps=3 changes that field only: the rest of the block is GRPO's (lr 1e-6, constant), not
    TrainConfig's class defaults (lr 1e-3, cosine)."""
    from alignlab.recipes.grpo import GRPOConfig

    cfg = load_config(GRPOConfig, None, ["train.max_steps=3"])
    assert (cfg.train.max_steps, cfg.train.lr, cfg.train.schedule) == (3, 1e-6, "constant")
    assert cfg.train == dataclasses.replace(GRPOConfig().train, max_steps=3)


def test_a_dict_field_in_a_block_is_replaced_not_merged():
    from alignlab.recipes.grpo import GRPOConfig

    cfg = load_config(GRPOConfig, None, ['rollout.reward_funcs={"correctness": 1.0}', "rollout.num_generations=4"])
    assert cfg.rollout.reward_funcs == {"correctness": 1.0} and cfg.rollout.num_generations == 4
    assert cfg.train.lr == 1e-6
