"""Padding-free packing: each packed document gets the logits, loss and gradients it gets alone, attention
never crosses documents, rows are filled by best-fit decreasing, and the sampler resumes exactly."""

import io

import pytest
import torch
import torch.nn.functional as F

from alignlab.data.packing import IGNORE_INDEX, PackedBatches, best_fit_decreasing, collate_packed, pack
from alignlab.model import CausalLM, attention, preset
from alignlab.model.attention import ATTENTION, causal_attention_train, documents, naive_attention
from alignlab.model.hf import load_model
from alignlab.objectives import linear_cross_entropy

from .hf_models import VOCAB, make_hf_model

LENGTHS = [13, 7, 21, 3, 9, 30, 2, 17]


def examples(lengths=LENGTHS, seed=0):
    """(input_ids, labels) pairs: labels[t] = input_ids[t + 1] after the first third, else -100; last -100."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        labels = [y if t >= n // 3 else IGNORE_INDEX for t, y in enumerate(ids[1:])] + [IGNORE_INDEX]
        out.append((ids, labels))
    return out


def tiny(arch, **kw):
    torch.manual_seed(0)
    return CausalLM(preset(arch, vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                           **kw))


def spans_of(batch):
    """(row, start, end) of each document of a collated batch, from its position ids."""
    docs = documents(batch["position_ids"])
    return [(b, s, e) for b, row in enumerate(docs.spans) for s, e in row]


# --- attention on packed rows ---------------------------------------------------------------------------


def test_documents_read_off_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    docs = documents(pos)
    assert docs.ids.tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]]
    assert docs.spans == [[(0, 3), (3, 5), (5, 6)], [(0, 4), (4, 6)]]
    assert documents(torch.arange(6)[None]) is None  # one document: the ordinary path
    assert documents(torch.arange(5, 11).expand(2, 6)) is None  # offset positions are still one document


@pytest.mark.parametrize("Hq,Hkv,window", [(4, 4, None), (8, 2, None), (4, 1, 5)])
def test_three_forms_agree_on_packed_rows(Hq, Hkv, window):
    """naive and tiled mask across documents, sdpa runs each alone: the same block-diagonal attention,
    and the CPU training path's gradients match the formula's."""
    g = torch.Generator().manual_seed(0)
    pos = torch.tensor([list(range(9)) + list(range(20)) + list(range(11)),
                        list(range(1)) + list(range(30)) + list(range(9))])
    docs = documents(pos)
    T = pos.shape[1]
    q = torch.randn(2, Hq, T, 16, generator=g).requires_grad_()
    k, v = (torch.randn(2, Hkv, T, 16, generator=g).requires_grad_() for _ in range(2))
    want = naive_attention(q, k, v, 0, None, window, docs)
    for b, row in enumerate(docs.spans):  # the formula on each document alone
        for s, e in row:
            alone = naive_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e], 0, None, window)
            assert (want[b:b + 1, :, s:e] - alone).abs().max() <= 1e-6
    dout = torch.randn(want.shape, generator=g)
    want_grads = torch.autograd.grad(want, (q, k, v), dout)
    for name in ("tiled", "sdpa"):
        got = ATTENTION[name](q, k, v, 0, None, window, docs)
        assert (got - want).abs().max() <= 1e-5, name
        for a, b in zip(torch.autograd.grad(got, (q, k, v), dout), want_grads):
            assert (a - b).abs().max() <= 1e-5, name


def test_sdpa_trains_each_document_on_the_cpu_training_path(monkeypatch):
    seen = []
    monkeypatch.setattr(attention, "causal_attention_train",
                        lambda q, k, v: seen.append(q.shape[2]) or causal_attention_train(q, k, v))
    pos = torch.tensor([list(range(5)) + list(range(3)) + list(range(8))])
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    attention.sdpa_attention(q, q, q, 0, None, None, documents(pos))
    assert seen == [5, 3, 8]


# --- the model on packed batches ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("flatten", [True, False])
def test_packed_loss_and_gradients_equal_each_document_alone(arch, flatten):
    """Per-token losses of every document and the gradients of the summed loss, packed vs one by one."""
    model = tiny(arch).train()
    W = model.lm_head.weight
    rows, stats = pack(examples(), max_tokens=40)
    assert stats.rows >= 2 and stats.truncated == 0
    batch = collate_packed(rows, flatten=flatten)
    labels = batch["labels"]
    n = int((labels != IGNORE_INDEX).sum())

    hidden = model(batch["input_ids"], position_ids=batch["position_ids"], head=False)
    packed_tok = F.cross_entropy(model.lm_head(hidden).flatten(0, 1), labels.flatten(), reduction="none")
    packed_tok = packed_tok.view(labels.shape)
    loss = linear_cross_entropy(hidden, W, labels, n)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    alone_loss = 0.0
    for b, s, e in spans_of(batch):
        x, y = batch["input_ids"][b:b + 1, s:e], labels[b:b + 1, s:e]
        if int(x[0, 0]) == 0:  # flatten=False: a row's padding tail
            continue
        h = model(x, head=False)
        alone_tok = F.cross_entropy(model.lm_head(h).flatten(0, 1), y.flatten(), reduction="none")
        diff = (packed_tok[b, s:e] - alone_tok).abs().max().item()
        assert diff <= 1e-5, f"{arch}: document [{s}, {e}) of row {b} differs by {diff}"
        alone_loss = alone_loss + linear_cross_entropy(h, W, y, n)
    assert abs(loss.item() - alone_loss.item()) <= 1e-5
    alone_grads = torch.autograd.grad(alone_loss, list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), grads, alone_grads):
        assert (a - b).abs().max() <= 1e-5, f"{arch}: gradient of {name} differs"


def test_packed_gradients_with_gradient_checkpointing():
    model = tiny("llama").train()
    batch = collate_packed(pack(examples(), max_tokens=40)[0])

    def grads():
        hidden = model(batch["input_ids"], position_ids=batch["position_ids"], head=False)
        loss = linear_cross_entropy(hidden, model.lm_head.weight, batch["labels"], 100)
        return torch.autograd.grad(loss, list(model.parameters()))

    want = grads()
    model.gradient_checkpointing = True
    for a, b in zip(grads(), want):
        assert (a - b).abs().max() <= 1e-6


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("impl", ["naive", "tiled", "sdpa"])
def test_attention_never_crosses_documents(arch, impl):
    """Change every token of document 1: the logits of the other documents do not move, its own do."""
    model = tiny(arch, attn_impl=impl).eval()
    batch = collate_packed(pack(examples(), max_tokens=200)[0])
    spans = spans_of(batch)
    assert len(spans) == len(LENGTHS)
    _, s1, e1 = spans[1]
    x, pos = batch["input_ids"], batch["position_ids"]
    y = x.clone()
    y[0, s1:e1] = (y[0, s1:e1] + 1) % VOCAB
    a, b = model(x, position_ids=pos), model(y, position_ids=pos)
    others = torch.ones(x.shape[1], dtype=torch.bool)
    others[s1:e1] = False
    assert (a[0, others] - b[0, others]).abs().max() <= 1e-6
    assert (a[0, s1:e1] - b[0, s1:e1]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("arch,kw", [("llama", {}), ("gpt2", {}), ("mistral", {"sliding_window": 8})])
def test_packed_logits_match_transformers(arch, kw, tmp_path):
    """transformers reads packed position_ids the same way (when there is no attention_mask and no cache)."""
    hf = make_hf_model(arch, **kw)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    rows = pack(examples(), max_tokens=40)[0]
    for flatten in (True, False):
        batch = collate_packed(rows, flatten=flatten)
        x, pos = batch["input_ids"], batch["position_ids"]
        ref = hf(x, position_ids=pos, use_cache=False).logits
        assert (ref - ours(x, position_ids=pos)).abs().max() <= 1e-4


@torch.no_grad()
def test_unpacked_calls_are_unchanged(monkeypatch):
    """Ordinary position ids (one document per row) take the ordinary path and give the same logits."""
    monkeypatch.setattr(attention, "per_document", lambda *a: pytest.fail("an unpacked call took per_document"))
    model = tiny("llama").eval()
    x = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    want = model(x)
    assert torch.equal(model(x, position_ids=torch.arange(24)[None]), want)
    model(x, attention_mask=torch.ones_like(x), position_ids=torch.zeros_like(x))  # a mask: never packed


# --- packing and the sampler ----------------------------------------------------------------------------


def test_best_fit_decreasing_fills_rows():
    lengths = [7, 5, 3, 3, 2, 6, 4]  # 30 tokens: three full rows of 10
    rows = best_fit_decreasing(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert [sum(lengths[i] for i in row) for row in rows] == [10, 10, 10]
    assert rows[0] == [0, 2]  # the longest first; the 4 went to the 6 (room 4), not the 7 (room 3)
    lengths = [6, 5, 5, 4, 4, 3, 2, 1]
    assert len(best_fit_decreasing(lengths, 10)) == 3


def test_pack_statistics_truncation_and_drops():
    data = examples([5, 30, 12, 8])
    data.append(([5, 6, 7], [IGNORE_INDEX] * 3))  # no target: dropped
    data.append(([5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9]))  # only target is the last: dropped
    rows, stats = pack(data, max_tokens=16)
    assert (stats.examples, stats.truncated, stats.dropped) == (4, 1, 2)
    assert stats.tokens == 5 + 16 + 12 + 8 and stats.rows == 3
    assert stats.fill == pytest.approx(41 / 48)
    assert stats.as_dict()["fill"] == pytest.approx(41 / 48)
    for row in rows:
        assert sum(len(ids) for ids, _ in row) <= 16
        for ids, labels in row:
            assert len(ids) == len(labels) and labels[-1] == IGNORE_INDEX
    cut = next(d for row in rows for d in row if len(d[0]) == 16)  # the 30-token example kept its start
    assert cut[0] == data[1][0][:16] and cut[1][:15] == data[1][1][:15]


def test_collate_layouts():
    docs = [([1, 2, 3], [2, 3, -100]), ([4, 5], [5, -100])]
    flat = collate_packed([docs[:1], docs[1:]])
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert flat["labels"].tolist() == [[2, 3, -100, 5, -100]]
    rows = collate_packed([docs[:1], docs[1:]], pad_id=0, flatten=False)
    assert rows["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]  # the pad tail is a document of its own
    assert rows["labels"].tolist() == [[2, 3, -100], [5, -100, -100]]


def test_sampler_epochs_and_exact_resume():
    data = examples([5, 9, 14, 3, 22, 7, 11, 6, 18, 4, 8, 13], seed=1)
    one = PackedBatches(data, max_tokens=24, rows_per_batch=1, seed=3)
    seen = sorted(t for _ in range(one.stats.rows) for t in one.next_batch()["input_ids"][0].tolist())
    assert seen == sorted(t for ids, _ in data for t in ids)  # every example once per epoch
    a = PackedBatches(data, max_tokens=24, rows_per_batch=2, seed=3)
    for _ in range(4):
        a.next_batch()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as a checkpoint stores it
    b = PackedBatches(data, max_tokens=24, rows_per_batch=2, seed=3)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for _ in range(7):  # across epoch boundaries
        x, y = a.next_batch(), b.next_batch()
        assert all(torch.equal(x[k], y[k]) for k in ("input_ids", "labels", "position_ids"))
    assert a.epoch == b.epoch >= 2
    with pytest.raises(ValueError, match="dropped"):
        PackedBatches([([1, 2], [IGNORE_INDEX, IGNORE_INDEX])], max_tokens=8, rows_per_batch=1, seed=0)
