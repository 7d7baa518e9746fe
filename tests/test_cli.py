"""The command line: info, generate (same text as transformers' greedy generate), one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from alignlab.cli import main

from .hf_models import make_hf_model, require

transformers = require("transformers")

TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
        "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. ") * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random Llama with a BPE tokenizer trained here, saved as one HF directory."""
    from alignlab.text import train_bpe

    d = tmp_path_factory.mktemp("llama_bpe")
    tok = train_bpe(TEXT, vocab_size=320, progress=False)
    tok.save(d)
    hf = make_hf_model("llama", vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, bos_token_id=None)
    hf.save_pretrained(d)
    return d


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "alignlab.cli", *args], capture_output=True, text=True)


def test_generate_prints_what_transformers_generates(model_dir, capsys):
    prompt = "The quick brown"
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = hf.generate(**ids, do_sample=False, max_new_tokens=24)
    expected = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert main(["generate", "--model", str(model_dir), "--prompt", prompt, "--max-new-tokens", "24",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_loads_the_weights_in_the_dtype_asked_for(model_dir, capsys, monkeypatch):
    import alignlab.model.hf as hf

    loaded = []
    real = hf.load_model
    monkeypatch.setattr(hf, "load_model", lambda *a, **kw: loaded.append(kw["dtype"]) or real(*a, **kw))
    args = ["generate", "--model", str(model_dir), "--prompt", "The quick brown", "--max-new-tokens", "8"]
    assert main(args) == 0  # auto, which the test suite's ALIGNLAB_AUTO_DTYPE makes fp32
    auto = capsys.readouterr()
    assert auto.err == "precision: fp32: ALIGNLAB_AUTO_DTYPE=fp32\n" and auto.out.strip()
    assert main([*args, "--dtype", "bf16"]) == 0
    bf16 = capsys.readouterr()
    assert bf16.err.startswith("precision: bf16 weights: asked for") and bf16.out.strip()
    assert loaded == [torch.float32, torch.bfloat16]
    assert run_cli("generate", "--model", str(model_dir), "--prompt", "hi", "--dtype", "fp16").returncode == 2


def test_info(model_dir, capsys):
    assert main(["info", "--model", str(model_dir), "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    assert "llama (2 layers, dim 64, 4 heads, 2 kv heads" in out
    assert "parameters" in out and "FLOPs/token" in out and "KV cache" in out


@pytest.mark.parametrize("breakage,expected", [
    ("corrupt", "model.safetensors: corrupt safetensors file"),
    ("model_type", "unsupported model_type 'mamba'"),
    ("shape", "has shape ["),
])
def test_bad_checkpoints_give_one_line_errors(model_dir, tmp_path, breakage, expected):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    if breakage == "corrupt":
        (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100])
    elif breakage == "model_type":
        (d / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    else:
        (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 32}))
    r = run_cli("generate", "--model", str(d), "--prompt", "hi")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_missing_directory(tmp_path):
    r = run_cli("info", "--model", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not a model directory" in r.stderr and "Traceback" not in r.stderr


def test_chat_streams_a_reply_and_keeps_history(model_dir, monkeypatch, capsys):
    import io

    from alignlab.infer import Engine

    prompts = []
    real_stream = Engine.stream

    def spy(self, prompt, params):
        prompts.append(self.tokenizer.decode(prompt))
        yield from real_stream(self, prompt, params)

    monkeypatch.setattr(Engine, "stream", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nagain\n\n"))
    assert main(["chat", "--model", str(model_dir), "--template", "chatml", "--system", "Be brief.",
                 "--max-new-tokens", "8", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2
    first_reply = out.split("assistant> ")[1].split("\n")[0]
    assert prompts[0] == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n" \
                         "<|im_start|>assistant\n"
    # the second turn sees the whole conversation, including the model's first reply
    assert prompts[1] == prompts[0] + first_reply + "<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n" \
                                      "<|im_start|>assistant\n"


def test_demo_end_to_end(tmp_path):
    from alignlab.demo import run_demo
    from alignlab.model.hf import load_model

    result = run_demo(out_dir=str(tmp_path), steps=20)
    assert result["final_loss"] < result["initial_loss"] - 0.2  # it learned something in 20 steps
    assert json.loads((tmp_path / "result.json").read_text()) == result
    ours = load_model(tmp_path / "model")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert (reloaded(x).logits - ours(x)).abs().max() <= 1e-4


# --- which errors are the user's --------------------------------------------------------------------------------


def test_a_user_error_is_one_line_and_debug_shows_its_traceback(tmp_path):
    for args in (["pretrain", "train.lrr=1"], ["pretrain", "--config", str(tmp_path / "nope.yaml")],
                 ["eval-world", "--model", str(tmp_path), "--levels", "7"]):
        r = run_cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith(f"alignlab {args[0]}: error: ")
    r = run_cli("--debug", "pretrain", "train.lrr=1")
    assert r.returncode == 1 and "Traceback" in r.stderr and "ConfigError: config: unknown key train.lrr" in r.stderr


@pytest.mark.parametrize("bug", [ValueError("an index off by one"), OSError("a temp file of our own vanished"),
                                 ZeroDivisionError("division by zero")])
def test_a_bug_raises_with_its_traceback(monkeypatch, bug):
    """Only alignlab.errors.UserError (and a chat template's error) is the user's; a ValueError or OSError from
    a bug must not turn into a one-line exit 2 that hides where it came from."""
    from alignlab.recipes import pretrain

    def run(cfg, resume=False):
        raise bug

    monkeypatch.setattr(pretrain, "run", run)
    with pytest.raises(type(bug), match=str(bug)):
        main(["pretrain"])


def test_a_diverged_run_exits_1(monkeypatch, capsys):
    from alignlab.recipes import pretrain
    from alignlab.train.trainer import TrainingDiverged

    def run(cfg, resume=False):
        raise TrainingDiverged("step 3: the loss is nan")

    monkeypatch.setattr(pretrain, "run", run)
    assert main(["pretrain"]) == 1
    assert capsys.readouterr().err == "alignlab pretrain: training diverged: step 3: the loss is nan\n"
    with pytest.raises(TrainingDiverged):
        main(["--debug", "pretrain"])


def test_every_command_is_registered_the_same_way(capsys):
    from alignlab.cli import COMMANDS, build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    listed = "".join(capsys.readouterr().out.split())  # argparse wraps lines (also at hyphens)
    for c in COMMANDS:
        assert "".join(f"{c.name} {c.help}".split()) in listed
        with pytest.raises(SystemExit) as e:
            parser.parse_args([c.name, "--help"])
        assert e.value.code == 0
    assert len({c.name for c in COMMANDS}) == len(COMMANDS) >= 15


def test_generate_warns_past_the_trained_positions(model_dir, capsys):
    n = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    assert main(["generate", "--model", str(model_dir), "--prompt", "The quick brown", "--max-new-tokens", "4"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["generate", "--model", str(model_dir), "--prompt", "The quick brown", "--max-new-tokens",
                 str(n)]) == 0
    assert f"past the {n} positions this model was trained on" in capsys.readouterr().err
