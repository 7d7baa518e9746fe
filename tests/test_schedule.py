"""Learning-rate schedules against transformers' schedulers on the same steps."""

import pytest
import torch

from alignlab.train.schedule import lr_factor

from .hf_models import require

transformers = require("transformers")
opt_module = require("transformers.optimization")

WARMUP, TOTAL = 10, 100


def hf_factors(make):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(TOTAL):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind,make", [
    ("constant", lambda o: opt_module.get_constant_schedule_with_warmup(o, WARMUP)),
    ("linear", lambda o: opt_module.get_linear_schedule_with_warmup(o, WARMUP, TOTAL)),
    ("cosine", lambda o: opt_module.get_cosine_schedule_with_warmup(o, WARMUP, TOTAL)),
])
def test_matches_transformers(kind, make):
    ours = [lr_factor(s, kind, WARMUP, TOTAL) for s in range(TOTAL)]
    assert ours == pytest.approx(hf_factors(make), abs=1e-12)


def test_cosine_with_floor_matches_transformers():
    make = lambda o: opt_module.get_cosine_with_min_lr_schedule_with_warmup(o, WARMUP, TOTAL, min_lr_rate=0.1)  # noqa: E731
    ours = [lr_factor(s, "cosine", WARMUP, TOTAL, min_lr_ratio=0.1) for s in range(TOTAL)]
    assert ours == pytest.approx(hf_factors(make), abs=1e-12)


def test_wsd_matches_transformers():
    decay = int(0.2 * TOTAL)
    make = lambda o: opt_module.get_wsd_schedule(o, WARMUP, decay, num_stable_steps=TOTAL - WARMUP - decay,  # noqa: E731
                                                 decay_type="1-sqrt")
    ours = [lr_factor(s, "wsd", WARMUP, TOTAL) for s in range(TOTAL)]
    assert ours == pytest.approx(hf_factors(make), abs=1e-12)


def test_shape_and_bad_name():
    assert lr_factor(0, "cosine", 5, 50) == 0.0 and lr_factor(5, "cosine", 5, 50) == 1.0
    assert lr_factor(49, "linear", 5, 50, min_lr_ratio=0.1) > 0.1
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        lr_factor(0, "cosin", 5, 50)
