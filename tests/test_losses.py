"""Each loss against an independent reference: the paper's pseudocode written out with loops
in float64, plus a case worked by hand. Gradients are compared too."""

import math

import pytest
import torch

from cssl_core.losses import barlow_twins, info_nce, negative_cosine, nt_xent


def _unit(v):
    return v / v.norm()


def ref_nt_xent(z1, z2, t):
    # SimCLR Alg. 1: l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t), averaged over all 2N anchors.
    z = [_unit(v) for v in torch.cat([z1, z2])]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(torch.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total = total - torch.log(torch.exp(z[i] @ z[j] / t) / denom)
    return total / n2


def ref_info_nce(q, k, queue, t):
    # MoCo Alg. 1, one query at a time: positive logit first, then the K queue logits.
    total = 0.0
    for qi, ki in zip(q, k):
        qi, ki = _unit(qi), _unit(ki.detach())
        pos = torch.exp(qi @ ki / t)
        neg = sum(torch.exp(qi @ _unit(c.detach()) / t) for c in queue)
        total = total - torch.log(pos / (pos + neg))
    return total / len(q)


def ref_negative_cosine(p, z):
    z = z.detach()
    return -sum(pi @ zi / (pi.norm() * zi.norm()) for pi, zi in zip(p, z)) / len(p)


def ref_barlow_twins(z1, z2, lambd):
    n, d = z1.shape
    def standardise(z):
        mean = z.sum(0) / n
        var = ((z - mean) ** 2).sum(0) / n
        return (z - mean) / torch.sqrt(var + 1e-5)
    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[m, i] * b[m, j] for m in range(n)) / n
            loss = loss + ((1 - c) ** 2 if i == j else lambd * c ** 2)
    return loss


def _pair(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def _check(fn, ref, inputs, **kw):
    ours = fn(*inputs, **kw)
    ours_grads = torch.autograd.grad(ours, inputs, allow_unused=True)
    ref_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    theirs = ref(*ref_inputs, *kw.values())
    theirs_grads = torch.autograd.grad(theirs, ref_inputs, allow_unused=True)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    for x, g_ours, g_ref in zip(inputs, ours_grads, theirs_grads):
        g_ours = torch.zeros_like(x) if g_ours is None else g_ours
        g_ref = torch.zeros_like(x) if g_ref is None else g_ref
        torch.testing.assert_close(g_ours.double(), g_ref.double(), rtol=1e-4, atol=1e-6)


def test_nt_xent_matches_reference():
    _check(nt_xent, ref_nt_xent, _pair((6, 5), (6, 5)), temperature=0.5)


def test_nt_xent_by_hand():
    # z1 = z2 = (e1, e2), T = 1: each anchor sees its positive at cos 1 and two negatives at cos 0.
    e = torch.eye(2)
    assert nt_xent(e, e.clone(), temperature=1.0).item() == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)


def test_info_nce_matches_reference():
    q, k, queue = _pair((4, 5), (4, 5), (7, 5), seed=1)
    _check(info_nce, ref_info_nce, [q, k, queue], temperature=0.2)


def test_info_nce_by_hand_and_no_gradient_to_keys():
    q = torch.tensor([[2.0, 0.0]], requires_grad=True)
    k = torch.tensor([[3.0, 0.0]], requires_grad=True)
    queue = torch.tensor([[0.0, 5.0]], requires_grad=True)
    loss = info_nce(q, k, queue, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    loss.backward()
    assert k.grad is None and queue.grad is None and q.grad is not None


def test_negative_cosine_matches_reference_and_stops_gradient():
    p, z = _pair((5, 4), (5, 4), seed=2)
    _check(negative_cosine, ref_negative_cosine, [p, z])
    loss = negative_cosine(p, z)
    loss.backward()
    assert z.grad is None
    assert negative_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == pytest.approx(-1 / math.sqrt(2))


def test_barlow_twins_matches_reference():
    _check(barlow_twins, ref_barlow_twins, _pair((8, 3), (8, 3), seed=3), lambd=0.0051)


def test_barlow_twins_by_hand():
    # Perfectly correlated, decorrelated features: C = I up to eps, so the loss is ~0.
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins(z, z.clone()).item() == pytest.approx(0.0, abs=1e-8)
    # Opposite signs: C = -I, each diagonal term contributes (1 - (-1))^2 = 4.
    assert barlow_twins(z, -z).item() == pytest.approx(8.0, rel=1e-4)
