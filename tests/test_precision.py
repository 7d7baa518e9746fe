"""dtype=auto: bf16 where the processor runs it natively and faster (measured once, cached), else fp32; the Trainer,
the RL paths and the engine follow one decision. Machines are faked by patching what the module reads."""

from __future__ import annotations

import json

import pytest
import torch

import alignlab.model.precision as P
from alignlab.errors import ConfigError
from alignlab.infer import Engine, SamplingParams
from alignlab.model import CausalLM, preset
from alignlab.train.trainer import TrainConfig, autocast_for
from tests.train_fixture import make_trainer

AVX2 = ("AVX2", {"fpu", "avx", "avx2", "fma"})
AVX512_BF16 = ("AVX512", {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})


def fake_cpu(monkeypatch, tmp_path, machine=AVX512_BF16, speedup: float = 2.5) -> list:
    """This CPU, as `machine` = (capability, flags) whose bf16 matmul runs `speedup` times fp32; an empty cache and
    ALIGNLAB_AUTO_DTYPE unset. Returns the list the fake benchmark appends to when it runs."""
    runs = []
    monkeypatch.setattr(P, "cpu_capability", lambda: machine[0])
    monkeypatch.setattr(P, "cpu_flags", lambda: set(machine[1]) if machine[1] is not None else None)
    monkeypatch.setattr(P, "bf16_speedup", lambda: runs.append(1) or speedup)
    monkeypatch.setattr(P, "_speedups", {})
    monkeypatch.setattr(P, "_warned", set())
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ALIGNLAB_AUTO_DTYPE", raising=False)
    return runs


def test_an_avx2_cpu_gets_fp32_without_a_measurement(monkeypatch, tmp_path):
    runs = fake_cpu(monkeypatch, tmp_path, AVX2)
    p = P.resolve_precision("auto", "cpu", "train")
    assert (p.dtype, p.name, p.why) == (torch.float32, "fp32", "fp32: AVX2 only (no native bf16)")
    assert runs == [] and not (tmp_path / "cache" / "precision.json").exists()
    no_bf16_flag = ("AVX512", {"avx2", "avx512f"})  # AVX-512 without its bf16 extension
    fake_cpu(monkeypatch, tmp_path, no_bf16_flag)
    assert P.resolve_precision().why == "fp32: AVX512 without avx512_bf16 or amx_bf16 (no native bf16)"


def test_a_bf16_cpu_gets_bf16_when_it_is_fast_enough(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, speedup=2.5)
    p = P.resolve_precision("auto", "cpu", "train")
    assert (p.dtype, p.name) == (torch.bfloat16, "bf16")
    assert p.why == ("bf16 autocast (fp32 master weights): AVX512 with avx512_bf16, bf16 matmul 2.5x fp32 "
                     "(measured once, cached)")
    assert P.resolve_precision("auto", "cpu", "infer").why.startswith("bf16 weights: AVX512 with avx512_bf16")
    amx = ("AVX512", {"avx512f", "amx_tile", "amx_bf16"})
    fake_cpu(monkeypatch, tmp_path, amx, speedup=4.0)
    assert P.resolve_precision().why.startswith("bf16 autocast (fp32 master weights): AVX512 with amx_bf16, bf16 "
                                                "matmul 4.0x")


def test_a_bf16_cpu_that_is_not_fast_enough_gets_fp32(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, speedup=1.1)
    p = P.resolve_precision("auto", "cpu")
    assert p.name == "fp32" and p.why == ("fp32: AVX512 with avx512_bf16, but bf16 matmul 1.1x fp32 (measured once, "
                                          "cached), below 1.5x")
    fake_cpu(monkeypatch, tmp_path, ("DEFAULT", None), speedup=1.1)  # no /proc/cpuinfo: the measurement decides
    assert P.resolve_precision().why.startswith("fp32: DEFAULT (CPU flags unknown), but bf16 matmul 1.1x")


def test_the_measurement_is_cached_once_per_machine(monkeypatch, tmp_path):
    runs = fake_cpu(monkeypatch, tmp_path, speedup=2.5)
    assert P.resolve_precision().name == "bf16" and len(runs) == 1
    table = json.loads((tmp_path / "cache" / "precision.json").read_text())
    (key, value), = table.items()
    assert value == 2.5 and "avx512_bf16" in key and torch.__version__ in key
    assert f"threads={torch.get_num_threads()}" in key
    monkeypatch.setattr(P, "_speedups", {})  # a new process: reads the file
    assert P.resolve_precision().name == "bf16" and P.resolve_precision("auto", "cpu", "infer").name == "bf16"
    assert len(runs) == 1
    monkeypatch.setattr(P, "_speedups", {})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)  # another thread count is another measurement
    P.resolve_precision()
    assert len(runs) == 2 and len(json.loads((tmp_path / "cache" / "precision.json").read_text())) == 2


def test_the_environment_variable_overrides_auto_only(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, speedup=2.5)
    monkeypatch.setenv("ALIGNLAB_AUTO_DTYPE", "fp32")
    assert P.resolve_precision("auto").why == "fp32: ALIGNLAB_AUTO_DTYPE=fp32"
    assert P.resolve_precision("auto", "cuda").name == "fp32"
    assert P.resolve_precision("bf16").name == "bf16"  # a dtype asked for by name is taken as asked
    fake_cpu(monkeypatch, tmp_path, speedup=1.1)
    monkeypatch.setenv("ALIGNLAB_AUTO_DTYPE", "bf16")
    assert P.resolve_precision("auto").why == "bf16 autocast (fp32 master weights): ALIGNLAB_AUTO_DTYPE=bf16"
    monkeypatch.setenv("ALIGNLAB_AUTO_DTYPE", "fp16")
    with pytest.raises(ConfigError, match="ALIGNLAB_AUTO_DTYPE='fp16': expected fp32 or bf16"):
        P.resolve_precision("auto")
    with pytest.raises(ConfigError, match="dtype must be auto, fp32 or bf16, got 'float16'"):
        P.resolve_precision("float16")


def test_bf16_asked_for_on_a_cpu_without_it_warns_once(monkeypatch, tmp_path):
    runs = fake_cpu(monkeypatch, tmp_path, AVX2)
    with pytest.warns(RuntimeWarning, match=r"AVX2 only \(no native bf16\)\) is emulated and will be much slower"):
        p = P.resolve_precision("bf16", "cpu")
    assert p.name == "bf16" and p.why.endswith("asked for, though this CPU is AVX2 only (no native bf16): slow")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.resolve_precision("bf16", "cpu")  # said once
        assert P.resolve_precision("fp32", "cpu").why == "fp32: asked for"
        fake_cpu(monkeypatch, tmp_path, AVX512_BF16)
        assert P.resolve_precision("bf16", "cpu").why == "bf16 autocast (fp32 master weights): asked for"
    assert runs == []  # a dtype asked for by name is never measured


def test_cuda_gets_bf16(monkeypatch, tmp_path):
    runs = fake_cpu(monkeypatch, tmp_path, AVX2)
    p = P.resolve_precision("auto", torch.device("cuda"), "train")
    assert p.name == "bf16" and p.why.startswith("bf16 autocast (fp32 master weights): CUDA (")
    assert P.resolve_precision("auto", "cuda:0", "infer").why.startswith("bf16 weights: CUDA")
    assert runs == []


def test_a_gpu_without_bf16_units_gets_fp32(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, AVX2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    p = P.resolve_precision("auto", "cuda")
    assert p.name == "fp32" and "Tesla T4" in p.why and "8.0" in p.why
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert P.resolve_precision("auto", "cuda").name == "bf16"


def test_the_real_measurement_is_a_ratio():
    assert 0.001 < P.bf16_speedup(sizes=(64, 128), seconds=0.05) < 1000


def test_the_trainer_prints_and_records_its_precision(monkeypatch, tmp_path, capsys):
    result = make_trainer(tmp_path / "fp32", steps=2, save_every=0).fit()
    assert result["precision"] == {"dtype": "fp32", "why": "fp32: ALIGNLAB_AUTO_DTYPE=fp32"}
    assert "precision: fp32: ALIGNLAB_AUTO_DTYPE=fp32" in capsys.readouterr().out
    state = torch.load(tmp_path / "fp32" / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    assert state["config"]["precision"]["dtype"] == "fp32"

    runs = fake_cpu(monkeypatch, tmp_path, speedup=2.5)  # auto on a bf16 machine
    trainer = make_trainer(tmp_path / "auto", steps=1, save_every=0)
    assert trainer.precision.name == "bf16" and isinstance(trainer.autocast, torch.autocast)
    assert isinstance(autocast_for("auto", torch.device("cpu")), torch.autocast)  # the RL paths' context agrees
    assert len(runs) == 1  # one measurement for the run
    assert trainer.run_config["precision"]["why"].startswith("bf16 autocast (fp32 master weights): AVX512")
    fake_cpu(monkeypatch, tmp_path, AVX2)
    trainer = make_trainer(tmp_path / "avx2", steps=1, save_every=0)
    assert trainer.precision.why == "fp32: AVX2 only (no native bf16)" and not isinstance(trainer.autocast,
                                                                                           torch.autocast)
    with pytest.raises(ConfigError, match="train.dtype must be auto, fp32 or bf16"):
        TrainConfig(dtype="fp16")


def test_bf16_weights_generate_nearly_what_fp32_weights_do():
    """Greedy decoding from bf16 weights (logits cast to fp32 before sampling) against the same fp32 model: the tokens
    agree on most prompts (a random model's top logits are close, so bf16 rounding may flip a near tie)."""
    torch.manual_seed(0)
    fp32 = CausalLM(preset("llama", vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)).eval()
    bf16 = CausalLM(fp32.config).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16.to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 96, (n,), generator=g).tolist() for n in (3, 5, 8, 12, 4, 9, 6, 10)]
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True, logprobs=True)
    a, b = Engine(fp32).generate(prompts, params), Engine(bf16).generate(prompts, params)
    assert all(len(c.token_ids) == 8 for c in b)
    assert all(isinstance(x, float) and x <= 0 for c in b for x in c.logprobs)  # fp32 log-probs
    first = sum(x.token_ids[0] == y.token_ids[0] for x, y in zip(a, b))
    whole = sum(x.token_ids == y.token_ids for x, y in zip(a, b))
    assert first >= 7 and whole >= 5, f"of 8 prompts, {first} agree on the first token, {whole} on all 8"  # 8, 8 here


def test_machine_measurements_leave_the_seeded_generator_alone():
    """The speed measurements run once per machine, in the middle of whichever run finds the cache empty; if they
    drew from torch's global generator, that run would initialise and shuffle differently from the next one."""
    import alignlab.model.linear as L
    from alignlab.train.mfu import measure_peak_flops

    torch.manual_seed(0)
    before = torch.get_rng_state()
    P.bf16_speedup(sizes=(32,), seconds=0.01)
    measure_peak_flops(torch.device("cpu"), sizes=(32,), seconds=0.01)
    L._split_pays.pop(1, None)
    L.split_pays(1)
    assert torch.equal(torch.get_rng_state(), before)
