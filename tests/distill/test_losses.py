from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cmcd_edge.distill.losses import LOSSES, METHODS, LossDims, LossParams, Pair, Recipe, parse_recipe
from cmcd_edge.errors import UserError

DIMS = LossDims(s_dim=4, t_dim=4, num_classes=3, n_train=10)


def _pair(seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return Pair(s_emb=torch.randn(5, 4, generator=g).requires_grad_(requires_grad),
                s_logits=torch.randn(5, 3, generator=g).requires_grad_(requires_grad),
                t_emb=torch.randn(5, 4, generator=g), t_logits=torch.randn(5, 3, generator=g),
                idx=torch.tensor([0, 2, 4, 6, 8]), lab_logits=torch.randn(3, 3, generator=g).requires_grad_(requires_grad),
                lab_y=torch.tensor([0, 1, 2]))


def _np_softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_finite_and_gradient_reaches_student(name):
    torch.manual_seed(0)
    loss = LOSSES.get(name)(DIMS, LossParams())
    b = _pair()
    value = loss(b)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    grads = [t.grad for t in (b.s_emb, b.s_logits, b.lab_logits) if t.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_cmd_golden_value():
    p = LossParams(tau_s=0.1, tau_t=0.05, queue_size=0)
    loss = LOSSES.get("cmd")(DIMS, p)
    loss.proj = nn.Identity()
    b = _pair(1)
    s, t = _unit(b.s_emb.detach().numpy()), _unit(b.t_emb.numpy())
    p_t, p_s = _np_softmax(t @ t.T / 0.05), _np_softmax(s @ t.T / 0.1)
    expected = -(p_t * np.log(p_s)).sum(1).mean()
    assert loss(b).item() == pytest.approx(expected, rel=1e-5)


def test_cmd_queue_adds_past_teacher_anchors():
    loss = LOSSES.get("cmd")(DIMS, LossParams(queue_size=8))
    loss(_pair(1))
    assert int(loss.filled) == 5
    loss(_pair(2))
    assert int(loss.filled) == 8


def test_cmc_golden_value():
    loss = LOSSES.get("cmc")(DIMS, LossParams(cmc_tau=0.1))
    loss.proj = nn.Identity()
    b = _pair(2)
    s, t = _unit(b.s_emb.detach().numpy()), _unit(b.t_emb.numpy())
    logits = s @ t.T / 0.1
    ce = lambda z: -np.log(np.diag(_np_softmax(z))).mean()  # noqa: E731
    assert loss(b).item() == pytest.approx(0.5 * (ce(logits) + ce(logits.T)), rel=1e-5)


def test_cmc_learnable_temperature_is_a_parameter():
    loss = LOSSES.get("cmc")(DIMS, LossParams(cmc_learnable_tau=True))
    assert any(n == "log_inv_tau" for n, _ in loss.named_parameters())


def test_kd_golden_value():
    b = _pair(3)
    zs, zt = b.s_logits.detach().numpy() / 4, b.t_logits.numpy() / 4
    p_t, p_s = _np_softmax(zt), _np_softmax(zs)
    expected = (p_t * (np.log(p_t) - np.log(p_s))).sum(1).mean() * 16
    assert LOSSES.get("kd")(DIMS, LossParams())(b).item() == pytest.approx(expected, rel=1e-5)


def test_kd_zero_when_logits_match():
    b = _pair(3)
    b.s_logits = b.t_logits.clone()
    assert LOSSES.get("kd")(DIMS, LossParams())(b).item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_zero_when_student_equals_teacher():
    b = _pair(4)
    b.s_emb = b.t_emb.clone()
    assert LOSSES.get("rkd")(DIMS, LossParams())(b).item() == pytest.approx(0.0, abs=1e-6)


def test_crd_updates_memory_bank_with_momentum():
    loss = LOSSES.get("crd")(DIMS, LossParams(crd_dim=4))
    before = loss.bank_s.clone()
    b = _pair(5)
    loss(b)
    changed = (loss.bank_s != before).any(1)
    assert changed[b.idx].all() and not changed[[1, 3, 5, 7, 9]].any()


def _crd_reference(loss, b) -> float:
    """CRD's NCE loss (Tian et al., eq. 19) in numpy, with the negatives the module draws (same seed, same order)."""
    g = torch.manual_seed(3)
    n, k = loss.n, loss.k
    negs = [torch.randint(0, n, (5, k), generator=g).numpy() for _ in range(2)]  # teacher anchors first, then student
    with torch.no_grad():
        s = _unit(loss.embed_s(b.s_emb).numpy().astype(np.float64))
        t = _unit(loss.embed_t(b.t_emb).numpy().astype(np.float64))
    total = 0.0
    for anchor, bank, neg in ((t, loss.bank_s.numpy(), negs[0]), (s, loss.bank_t.numpy(), negs[1])):
        cand = np.concatenate([b.idx.numpy()[:, None], neg], 1)
        out = np.exp(np.einsum("bkd,bd->bk", bank[cand].astype(np.float64), anchor) / loss.t)
        out = out / (out.mean() * n)  # the normaliser Z, fixed from the first batch
        m = k / n
        total += -(np.log(out[:, 0] / (out[:, 0] + m + 1e-7)) + np.log(m / (out[:, 1:] + m + 1e-7)).sum(1)).mean()
    return total


@pytest.mark.parametrize("dense", [True, False])
def test_crd_matches_the_papers_nce_loss(dense):
    torch.manual_seed(0)
    loss = LOSSES.get("crd")(DIMS, LossParams(crd_dim=4, crd_negatives=6))
    loss.dense = dense  # scores of the whole bank, or of the drawn rows only
    b = _pair(7)
    want = _crd_reference(loss, b)
    torch.manual_seed(3)
    assert loss(b).item() == pytest.approx(want, rel=1e-5)


def test_crd_dense_and_gathered_scores_give_one_loss_and_gradient():
    """The bank's scores as one matrix product (a bank a few times the candidates: mfeat's) or gathered rows (a large
    bank) are the same loss: only the order of float sums differs."""
    torch.manual_seed(0)
    dims = LossDims(s_dim=4, t_dim=4, num_classes=3, n_train=40)
    got = []
    for dense in (True, False):
        torch.manual_seed(1)
        loss = LOSSES.get("crd")(dims, LossParams(crd_dim=8, crd_negatives=12))
        loss.dense = dense
        b = _pair(8)
        torch.manual_seed(2)
        value = loss(b)
        value.backward()
        got.append((value.item(), b.s_emb.grad.clone(), loss.embed_t.weight.grad.clone(), loss.bank_s.clone()))
    (v1, g1, w1, bank1), (v2, g2, w2, bank2) = got
    assert v1 == pytest.approx(v2, rel=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1, w2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bank1, bank2, rtol=1e-6, atol=1e-7)


def test_crd_scores_the_whole_bank_only_when_it_is_small():
    small = LOSSES.get("crd")(LossDims(4, 4, 3, n_train=1200), LossParams())  # mfeat's train rows, 256 negatives
    large = LOSSES.get("crd")(LossDims(4, 4, 3, n_train=100_000), LossParams())
    assert small.dense and not large.dense


def test_recipe_str_reads_like_torchdistill():
    r = Recipe(METHODS["cmcd"], DIMS, LossParams())
    assert str(r) == "Loss = 1.0 * cmd + 1.0 * cmc + 1.0 * kd + 1.0 * fitnet + 1.0 * ce"
    assert str(Recipe(parse_recipe("1*cmd+0.5*ce"), DIMS, LossParams())) == "Loss = 1.0 * cmd + 0.5 * ce"


def test_recipe_total_is_weighted_sum():
    r = Recipe([(2.0, "kd"), (0.5, "ce")], DIMS, LossParams())
    total, parts = r(_pair(6))
    assert total.item() == pytest.approx(2.0 * parts["kd"] + 0.5 * parts["ce"], rel=1e-5)


def test_unknown_loss_suggests_close_match():
    with pytest.raises(UserError, match="did you mean 'cmd'"):
        parse_recipe("1.0*cmdd")


@pytest.mark.parametrize("text,problem", [("1.0*cmd+x*kd", "weight of 'x\\*kd'"), ("-1*kd+1*ce", "weight of '-1\\*kd'"),
                                          ("nan*kd", "weight of 'nan\\*kd'"), ("1*kd+0.5*kd", "'kd' appears twice")])
def test_recipe_with_a_bad_weight_or_a_repeated_loss_names_the_term(text, problem):
    with pytest.raises(UserError, match=f"--recipe .*{problem}"):
        parse_recipe(text)


@pytest.mark.parametrize("name", ["cmd", "cmc"])
def test_linear_projector_is_one_linear_map(name):
    mlp = LOSSES.get(name)(DIMS, LossParams())
    lin = LOSSES.get(name)(DIMS, LossParams(proj="linear"))
    assert isinstance(lin.proj, nn.Linear) and isinstance(mlp.proj, nn.Sequential)
    assert torch.isfinite(lin(_pair()))


def test_unknown_projector_is_a_one_line_error():
    from cmcd_edge.distill.config import DistillConfig

    with pytest.raises(UserError, match="unknown loss.proj 'mpl' \\(did you mean 'mlp'\\?\\); valid: mlp, linear"):
        DistillConfig(data="builtin:mfeat", source="fac", target="zer", loss={"proj": "mpl"})
