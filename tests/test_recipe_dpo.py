"""`alignlab dpo`: every loss trains, the three references agree, the cache is reused, bad pairs are counted;
KTO trains on unpaired and on paired data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.lora import apply_lora
from alignlab.model.hf import load_model
from alignlab.recipes.dpo import (
    LOSSES,
    DPOConfig,
    count_kept_pairs,
    make_batch,
    pair_data,
    pair_logps,
    preference_step,
    reference_logps,
    run,
)
from alignlab.train.reference import Reference
from alignlab.train.trainer import TrainConfig


def pairs(world, split, n=None):
    return world.preference_pairs(split, kinds=("correctness", "safety"))[:n]  # safety pairs carry SafeDPO's flags


def config(tmp_path, base, **kw):
    train = TrainConfig(max_steps=4, lr=1e-3, warmup_steps=1, eval_every=2, save_every=2, plot=False,
                        peak_flops=1e11)
    return DPOConfig(out_dir=str(tmp_path / "dpo"), model=str(base), max_len=256, batch_size=4, eval_batches=2,
                     train=train, **kw)


@pytest.mark.parametrize("loss", [loss for loss in LOSSES if loss != "kto"])  # (kto: below)
def test_every_loss_trains_and_logs_trl_metrics(tmp_path, base, world, loss):
    result = run(config(tmp_path, base, loss=loss), train_records=pairs(world, "train", 24),
                 val_records=pairs(world, "test", 8))
    assert result["status"] == "finished" and math.isfinite(result["val_loss"])
    logged = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"} <= set(logged[0])
    assert "val/rewards/accuracies" in logged[-1]
    assert load_model(tmp_path / "dpo" / "model").config.vocab_size == world.tokenizer().vocab_size


def test_at_the_start_dpo_is_ln2_and_the_three_references_agree(tmp_path, base, world):
    from alignlab.data.preference import tokenize_pairs
    from alignlab.recipes.dpo import precompute_reference

    tok = world.tokenizer()
    examples = tokenize_pairs(tok, pairs(world, "train", 6), 256).examples
    model = load_model(base).eval()
    cfg = config(tmp_path, base)
    batch = make_batch(examples, {}, list(range(6)), tok.pad_token_id)
    copy_ref = reference_logps(Reference("copy", model), model, batch)
    cached = precompute_reference(model, examples, tok.pad_token_id, cfg, tmp_path / "ref.pt", base)
    torch.testing.assert_close(cached["ref_chosen"], copy_ref[0], atol=1e-5, rtol=1e-5)
    lora_model = apply_lora(load_model(base), cfg.lora.to_config()).eval()
    with torch.no_grad():  # a fresh adapter changes nothing; with it disabled the policy is the base exactly
        for p in (q for n, q in lora_model.named_parameters() if "lora_B" in n):
            p.normal_()
    lora_ref = reference_logps(Reference("lora", lora_model), lora_model, batch)
    torch.testing.assert_close(lora_ref[0], copy_ref[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        loss, metrics = preference_step(cfg, Reference("copy", model))(model, batch, 6.0)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6) and metrics["rewards/margins"] == 0.0
    # a second precompute with the same model and pairs reuses the cache
    again = precompute_reference(model, examples, tok.pad_token_id, cfg, tmp_path / "ref.pt", base)
    assert torch.equal(again["ref_chosen"], cached["ref_chosen"])


@pytest.mark.parametrize("loss", ["sigmoid", "safedpo"])
def test_held_out_metrics_count_every_pair_once(tmp_path, base, world, loss):
    # 7 held-out pairs in batches of 4: a batch of 4 and a short one of 3. The logged val/* metrics must be the
    # means over the 7 pairs, as one batch of all of them gives, not the mean of the two batch means.
    from alignlab.data.preference import tokenize_pairs

    val = pairs(world, "test", 7)
    result = run(config(tmp_path, base, loss=loss), train_records=pairs(world, "train", 24), val_records=val)
    assert result["status"] == "finished"
    tok = world.tokenizer()
    examples = tokenize_pairs(tok, val, 256).examples
    flags = {f"{side}_unsafe": torch.tensor([bool(r.get(f"{side}_unsafe", False)) for r in val])
             for side in ("chosen", "rejected")}  # SafeDPO's safety labels, as the recipe passes them
    batch = make_batch(examples, flags if loss == "safedpo" else {}, list(range(7)), tok.pad_token_id)
    cfg = config(tmp_path, base, loss=loss)
    policy, reference = load_model(tmp_path / "dpo" / "model").eval(), load_model(base).eval()
    with torch.no_grad():
        total, metrics = preference_step(cfg, Reference("copy", reference))(policy, batch, 1.0)
    kept = count_kept_pairs(batch) if loss == "safedpo" else 7
    assert result["val_loss"] == pytest.approx(float(total) / kept, rel=1e-4)
    for k in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/rejected"):
        assert result[f"val/{k}"] == pytest.approx(metrics[k], rel=1e-4, abs=1e-5), k
    assert result["val/rewards/accuracies"] * kept == pytest.approx(round(result["val/rewards/accuracies"] * kept))


def test_policy_logps_are_the_sums_over_completion_tokens(base, world):
    from alignlab.data.preference import tokenize_pairs

    tok = world.tokenizer()
    ex = tokenize_pairs(tok, pairs(world, "train", 2), 256).examples
    model = load_model(base).eval()
    batch = make_batch(ex, {}, [0, 1], tok.pad_token_id)
    with torch.no_grad():
        chosen, rejected, n_c, n_r = pair_logps(model, batch)
        logp = torch.log_softmax(model(batch["input_ids"]), -1)
    mask = batch["labels"] != -100
    direct = (logp.gather(-1, batch["labels"].clamp(min=0)[..., None])[..., 0] * mask).sum(1)
    torch.testing.assert_close(torch.cat([chosen, rejected]), direct, atol=1e-4, rtol=1e-5)
    assert torch.equal(torch.cat([n_c, n_r]), mask.sum(1))


def test_bad_pairs_are_counted_not_fatal(tmp_path, base, world):
    data = tmp_path / "pairs.jsonl"
    good = pairs(world, "train", 8)
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in good]
    rows.append({"prompt": good[0]["prompt"], "chosen": good[0]["chosen"]})  # no rejected
    rows.append({"prompt": good[0]["prompt"], "chosen": good[0]["chosen"], "rejected": good[0]["chosen"]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(config(tmp_path, base, data=str(data)))
    assert result["data"]["train"]["kept"] == 8
    with pytest.raises(ValueError, match="loss must be one of"):
        run(config(tmp_path, base, data=str(data), loss="dpo++"))


def test_precomputed_reference_without_held_out_pairs(tmp_path, base, world):
    result = run(config(tmp_path, base, reference="precomputed"), train_records=pairs(world, "train", 8),
                 val_records=[])
    assert result["status"] == "finished" and (tmp_path / "dpo" / "reference_logps.pt").exists()
    assert not (tmp_path / "dpo" / "reference_logps_val.pt").exists()


def test_rpo_adds_the_chosen_answers_per_token_nll(base, world, tmp_path):
    from alignlab.data.preference import tokenize_pairs

    tok = world.tokenizer()
    ex = tokenize_pairs(tok, pairs(world, "train", 4), 256).examples
    model = load_model(base).eval()
    batch = make_batch(ex, {}, list(range(4)), tok.pad_token_id)
    with torch.no_grad():
        plain, _ = preference_step(config(tmp_path, base), Reference("copy", model))(model, batch, 4.0)
        rpo, _ = preference_step(config(tmp_path, base, rpo_alpha=0.5), Reference("copy", model))(model, batch, 4.0)
        chosen, _, n_chosen, _ = pair_logps(model, batch)
    nll = (-chosen / n_chosen).mean()
    assert float(rpo - plain) == pytest.approx(0.5 * float(nll), rel=1e-5) and float(nll) > 0

    # SafeDPO drops a pair whose two answers are both unsafe: RPO's term leaves it out too
    both = torch.tensor([True, False, False, False])
    batch.update(chosen_unsafe=both, rejected_unsafe=both)
    with torch.no_grad():
        plain, _ = preference_step(config(tmp_path, base, loss="safedpo"), Reference("copy", model))(model, batch, 3.0)
        rpo, _ = preference_step(config(tmp_path, base, loss="safedpo", rpo_alpha=0.5),
                                 Reference("copy", model))(model, batch, 3.0)
    kept_nll = (-chosen / n_chosen)[1:].sum() / 3
    assert float(rpo - plain) == pytest.approx(0.5 * float(kept_nll), rel=1e-5)


def test_safedpo_trains_and_reports_the_winner_after_its_swap(base, world, tmp_path):
    # pair 0: the chosen answer unsafe, the rejected safe. SafeDPO swaps it: the rejected answer is the winner, and
    # RPO's NLL term must pull towards it, not towards the unsafe one; the metrics see the pairs as swapped.
    from alignlab.data.preference import tokenize_pairs

    tok = world.tokenizer()
    ex = tokenize_pairs(tok, pairs(world, "train", 4), 256).examples
    reference = load_model(base).eval()
    policy = load_model(base).eval()
    with torch.no_grad():  # a policy that differs from the reference, so the rewards do too
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    batch = make_batch(ex, {}, list(range(4)), tok.pad_token_id)
    batch.update(chosen_unsafe=torch.tensor([True, False, False, False]), rejected_unsafe=torch.zeros(4, dtype=bool))
    cfg = config(tmp_path, base, loss="safedpo", beta=0.5)
    with torch.no_grad():
        plain, _ = preference_step(cfg, Reference("copy", reference))(policy, batch, 4.0)
        rpo_cfg = config(tmp_path, base, loss="safedpo", beta=0.5, rpo_alpha=0.5)
        rpo, metrics = preference_step(rpo_cfg, Reference("copy", reference))(policy, batch, 4.0)
        chosen, rejected, n_c, n_r = pair_logps(policy, batch)
        ref_chosen, ref_rejected, _, _ = pair_logps(reference, batch)
    order = lambda first, rest: torch.cat([first[:1], rest[1:]])  # noqa: E731, pair 0 from `first`
    win, lose = order(rejected, chosen), order(chosen, rejected)
    win_nll = -win / order(n_r, n_c)
    assert float(rpo - plain) == pytest.approx(0.5 * float(win_nll.mean()), rel=1e-5)
    assert float(win_nll[0]) != pytest.approx(float(-chosen[0] / n_c[0]), rel=1e-3)  # (so the test can tell)
    r_win, r_lose = 0.5 * (win - order(ref_rejected, ref_chosen)), 0.5 * (lose - order(ref_chosen, ref_rejected))
    assert metrics["logps/chosen"] == pytest.approx(float(win.mean()), rel=1e-5)
    assert metrics["logps/rejected"] == pytest.approx(float(lose.mean()), rel=1e-5)
    assert metrics["rewards/chosen"] == pytest.approx(float(r_win.mean()), rel=1e-4, abs=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx(float((r_win > r_lose).double().mean()))


def test_safety_labels_are_read_strictly(tmp_path, base, world, capsys):
    from alignlab.data.errors import DataError
    from alignlab.data.preference import load_preference_data

    rows = [("False", "no"), ("0", "1"), ("TRUE", "false"), ("yes", "")]  # CSV cells are strings; "" is absent
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected,chosen_unsafe,rejected_unsafe\n"
                    + "".join(f"{a} + 1 =, {a + 1}, {a + 2},{c},{r}\n" for a, (c, r) in enumerate(rows)))
    data = load_preference_data(str(path))
    cfg = config(tmp_path, base, loss="safedpo")
    _, examples, extras = pair_data(world.tokenizer(), data.records, data.where, cfg, str(path))
    assert len(examples) == 4
    assert extras["chosen_unsafe"].tolist() == [False, False, True, True]
    assert extras["rejected_unsafe"].tolist() == [False, True, False, False]
    assert "warning" not in capsys.readouterr().out

    path.write_text(path.read_text().replace(",0,1\n", ",maybe,1\n"))  # the pair on line 3
    data = load_preference_data(str(path))
    with pytest.raises(DataError, match=r"pairs.csv:3: field 'chosen_unsafe': must be true \(unsafe\) or false"):
        pair_data(world.tokenizer(), data.records, data.where, cfg, str(path))

    # no safety label at all: SafeDPO would silently be DPO, so it says so
    unlabelled = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs(world, "train", 4)]
    _, _, extras = pair_data(world.tokenizer(), unlabelled, [f"record {i}" for i in range(4)], cfg, "mine.jsonl")
    assert not extras["chosen_unsafe"].any() and not extras["rejected_unsafe"].any()
    assert "warning: loss=safedpo, but no pair of mine.jsonl has a safety label" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# KTO: unpaired examples, each with a KL row (its prompt, another example's completion)


def unpaired(world, split, n):
    from alignlab.data.preference import unpair

    return [u for r in world.preference_pairs(split, kinds=("correctness", "safety"))[:n] for u in unpair(r)]


def kto_batch(world, n_pairs=3, max_len=256, take=None):
    from alignlab.data.preference import tokenize_unpaired
    from alignlab.recipes.dpo import kto_examples

    tok = world.tokenizer()
    examples = kto_examples(tokenize_unpaired(tok, unpaired(world, "train", n_pairs), max_len).examples, max_len)
    return examples, make_batch(examples, {}, list(range(take or len(examples))), tok.pad_token_id)


@pytest.mark.parametrize("data", ["unpaired", "paired"])
def test_kto_trains_on_unpaired_and_on_paired_data(tmp_path, base, world, data):
    records = unpaired(world, "train", 12) if data == "unpaired" else pairs(world, "train", 12)
    result = run(config(tmp_path, base, loss="kto", undesirable_weight=1.5), train_records=records,
                 val_records=unpaired(world, "test", 4))
    assert result["status"] == "finished" and math.isfinite(result["val_loss"])
    counts = result["data"]["train"]
    assert counts["kept"] == 24 and counts["desirable"] == counts["undesirable"] == 12  # pairs count as both
    logged = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*logged)
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl"} <= keys
    assert "rewards/accuracies" not in keys
    assert {"val/kl", "val/rewards/chosen", "val/rewards/rejected", "val/rewards/margins"} <= set(logged[-1])
    assert all(math.isfinite(r["loss"]) and r["kl"] >= 0 for r in logged if "kl" in r)
    assert result["step"] == 4 and (tmp_path / "dpo" / "model").is_dir()


def test_kto_at_the_start_is_the_formula_at_zero_rewards(tmp_path, base, world):
    from alignlab.objectives.preference import kto_loss

    _, batch = kto_batch(world, take=5)  # 3 desirable, 2 undesirable
    model = load_model(base).eval()
    cfg = config(tmp_path, base, loss="kto", beta=0.3, desirable_weight=1.0, undesirable_weight=1.5)
    with torch.no_grad():
        loss, metrics = preference_step(cfg, Reference("copy", model))(model, batch, 5.0)
    zeros = torch.zeros(5)
    expected = kto_loss(zeros, zeros, batch["label"], 0.0, 0.3, 1.0, 1.5).loss
    assert batch["label"].tolist() == [True, False, True, False, True]
    assert float(loss) == pytest.approx(float(expected), abs=1e-6) and float(expected) == pytest.approx(0.6)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6) and metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_kto_kl_rows_pair_each_prompt_with_another_prompts_completion():
    from alignlab.data.preference import UnpairedExample
    from alignlab.recipes.dpo import kto_examples

    # three pairs unpaired, as unpair orders them: both answers to one prompt side by side
    prompts = [[1, 2], [1, 3], [4]]
    ex = [UnpairedExample(prompts[i // 2], [10 + i] * (i + 1), [1] * (i + 1), i % 2 == 0) for i in range(6)]
    out = kto_examples(ex, max_len=4)
    donor = {tuple(e.completion_ids[:2]): i for i, e in enumerate(ex)}
    for i, k in enumerate(out):
        assert k.example is ex[i] and k.kl.prompt_ids == ex[i].prompt_ids and k.kl.label == ex[i].label
        j = donor[tuple(k.kl.completion_ids[:2])]
        assert ex[j].prompt_ids != ex[i].prompt_ids  # another prompt's completion
        assert len(k.kl.prompt_ids) + len(k.kl.completion_ids) <= 4  # cut to max_len
    assert sorted(donor[tuple(k.kl.completion_ids[:2])] for k in out) == list(range(6))  # each completion once
    assert kto_examples(ex[:1], 4)[0].kl.completion_ids == ex[0].completion_ids  # alone: its own partner


def test_kto_references_agree(tmp_path, base, world):
    from alignlab.recipes.dpo import precompute_reference

    tok = world.tokenizer()
    examples, batch = kto_batch(world)
    b = len(examples)
    assert batch["input_ids"].shape[0] == 2 * b and batch["label"].tolist() == [e.example.label for e in examples]

    model = load_model(base).eval()
    cfg = config(tmp_path, base, loss="kto")
    copy_ref = reference_logps(Reference("copy", model), model, batch)
    cached = precompute_reference(model, examples, tok.pad_token_id, cfg, tmp_path / "ref.pt", base)
    torch.testing.assert_close(cached["ref_logps"], copy_ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached["ref_KL_logps"], copy_ref[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(copy_ref[0], copy_ref[1])  # the KL rows are other sequences
    lora_model = apply_lora(load_model(base), cfg.lora.to_config()).eval()
    with torch.no_grad():
        for p in (q for n, q in lora_model.named_parameters() if "lora_B" in n):
            p.normal_()
    lora_ref = reference_logps(Reference("lora", lora_model), lora_model, batch)
    torch.testing.assert_close(lora_ref[0], copy_ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lora_ref[1], copy_ref[1], atol=1e-5, rtol=1e-5)
    precomputed = reference_logps(None, model, {**batch, **cached})  # reference=precomputed: the cached columns
    assert torch.equal(precomputed[0], cached["ref_logps"]) and torch.equal(precomputed[1], cached["ref_KL_logps"])


@pytest.mark.parametrize("reference", ["precomputed", "lora"])
def test_kto_trains_with_a_precomputed_or_lora_reference(tmp_path, base, world, reference):
    method = "lora" if reference == "lora" else "full"
    result = run(config(tmp_path, base, loss="kto", reference=reference, method=method),
                 train_records=unpaired(world, "train", 6), val_records=unpaired(world, "test", 2))
    assert result["status"] == "finished" and math.isfinite(result["val_loss"])
    assert (tmp_path / "dpo" / "reference_logps.pt").exists() == (reference == "precomputed")


def test_unpaired_data_needs_kto(tmp_path, base, world):
    with pytest.raises(ValueError, match="KTO is the loss for unpaired data"):
        run(config(tmp_path, base, loss="sigmoid"), train_records=unpaired(world, "train", 4), val_records=[])
    with pytest.raises(ValueError, match="rpo_alpha"):
        run(config(tmp_path, base, loss="kto", rpo_alpha=0.5), train_records=unpaired(world, "train", 4))
