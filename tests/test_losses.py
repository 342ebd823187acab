"""Each loss against an independent reference: the paper's pseudocode written out with loops
in float64, plus a case worked by hand. Gradients are compared too."""

import math

import pytest
import torch

from cssl_core.losses import (
    barlow_twins,
    dino_loss,
    info_nce,
    mocov3_loss,
    negative_cosine,
    nt_xent,
    sinkhorn,
    swav_loss,
)


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


def ref_sinkhorn(scores, epsilon, iterations):
    # SwAV Eq. 3 / Alg. 1 on Python floats: Q[k][b] = exp(s_bk / eps), total mass 1, then in turn
    # every prototype k gets mass 1/K and every sample b mass 1/B; the codes are B * Q^T.
    s = scores.detach().double().tolist()
    b, k = len(s), len(s[0])
    q = [[math.exp(s[j][i] / epsilon) for j in range(b)] for i in range(k)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for i in range(k):
            mass = sum(q[i])
            q[i] = [x / mass / k for x in q[i]]
        for j in range(b):
            mass = sum(q[i][j] for i in range(k))
            for i in range(k):
                q[i][j] = q[i][j] / mass / b
    return torch.tensor([[q[i][j] * b for i in range(k)] for j in range(b)], dtype=torch.float64)


def _log_softmax(x):
    return x - torch.log(torch.exp(x).sum())


def ref_swav(high_res, low_res, temperature, epsilon, iterations, queue_scores=None):
    # SwAV Eq. 1-2 with multi-crop: codes from each global crop, predicted from every other crop.
    crops = high_res + low_res
    total = 0.0
    for i, x in enumerate(high_res):
        b = len(x)
        scores = x if queue_scores is None or queue_scores[i] is None else torch.cat([x, queue_scores[i]])
        codes = ref_sinkhorn(scores, epsilon, iterations)[:b]
        subloss = 0.0
        for v, y in enumerate(crops):
            if v == i:
                continue
            for n in range(b):
                subloss = subloss - (codes[n] * _log_softmax(y[n] / temperature)).sum() / b
        total = total + subloss / (len(crops) - 1)
    return total / len(high_res)


def ref_dino(student_out, teacher_out, center, student_temp, teacher_temp):
    # DINO Alg. 1 (H(t, s) = -p_t log p_s), one teacher view, student view and sample at a time.
    center = center.detach().reshape(-1)
    total, n_pairs = 0.0, 0
    for iq, t in enumerate(teacher_out):
        for v, s in enumerate(student_out):
            if v == iq:
                continue
            for n in range(len(t)):
                p_t = torch.exp((t[n].detach() - center) / teacher_temp)
                p_t = p_t / p_t.sum()
                total = total - (p_t * _log_softmax(s[n] / student_temp)).sum() / len(t)
            n_pairs += 1
    return total / n_pairs


def ref_mocov3(q1, q2, k1, k2, temperature):
    # MoCo v3 Alg. 1: ctr(q, k) = 2T * CE(q k^T / T, diagonal), one query at a time.
    def ctr(q, k):
        q = [_unit(v) for v in q]
        k = [_unit(v.detach()) for v in k]
        total = 0.0
        for i in range(len(q)):
            denom = sum(torch.exp(q[i] @ kj / temperature) for kj in k)
            total = total - torch.log(torch.exp(q[i] @ k[i] / temperature) / denom)
        return total / len(q) * 2 * temperature
    return ctr(q1, k2) + ctr(q2, k1)


def _prototype_scores(n_crops, batch, n_prototypes, dim=8, seed=0):
    # Realistic SwAV scores: dot products of unit features with unit prototypes, in [-1, 1].
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.nn.functional.normalize(torch.randn(n_prototypes, dim, generator=g, dtype=torch.float64), dim=1)
    crops = []
    for _ in range(n_crops):
        z = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
        crops.append((z @ prototypes.T).requires_grad_())
    return crops


@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
def test_sinkhorn_matches_reference(iterations):
    (scores,) = _prototype_scores(1, 6, 4, seed=4)
    torch.testing.assert_close(
        sinkhorn(scores, epsilon=0.05, iterations=iterations).double(),
        ref_sinkhorn(scores, 0.05, iterations),
        rtol=1e-5,
        atol=1e-7,
    )


def test_sinkhorn_by_hand():
    # Uniform scores: every sample is spread evenly over the K prototypes.
    assert torch.allclose(sinkhorn(torch.zeros(3, 4)), torch.full((3, 4), 0.25))
    # [[s, -s], [-s, s]] already has equal marginals: the codes are the row softmax, sigmoid(2s / eps).
    s = 0.025
    codes = sinkhorn(torch.tensor([[s, -s], [-s, s]]), epsilon=0.05)
    p = math.e / (1 + math.e)
    torch.testing.assert_close(codes, torch.tensor([[p, 1 - p], [1 - p, p]]))
    # Both samples prefer prototype 0: equipartition splits them evenly after one round.
    codes = sinkhorn(torch.tensor([[0.9, 0.1], [0.9, 0.1]]), iterations=1)
    torch.testing.assert_close(codes, torch.full((2, 2), 0.5))


def test_sinkhorn_marginals():
    (scores,) = _prototype_scores(1, 8, 4, seed=5)
    codes = sinkhorn(scores)
    # Each sample's code is a distribution over prototypes...
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(8, dtype=codes.dtype))
    # ...and, as the rounds converge, each prototype receives B / K = 2 of the batch.
    converged = sinkhorn(scores, iterations=500)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(8, dtype=codes.dtype))
    torch.testing.assert_close(converged.sum(dim=0), torch.full((4,), 2.0, dtype=codes.dtype), rtol=0, atol=1e-4)


def test_sinkhorn_stable_shift_invariant_and_without_gradient():
    (scores,) = _prototype_scores(1, 5, 3, seed=6)
    codes = sinkhorn(scores)
    assert not codes.requires_grad
    # exp((s + 10) / 0.05) = exp(200+) overflows float32 unless the maximum is subtracted first.
    shifted = sinkhorn(scores.detach() + 10)
    assert torch.isfinite(shifted).all()
    torch.testing.assert_close(shifted, codes, rtol=1e-5, atol=1e-6)


def test_swav_matches_reference_with_local_crops():
    crops = _prototype_scores(4, 4, 5, seed=7)
    _check(
        lambda g1, g2, l1, l2, **kw: swav_loss([g1, g2], [l1, l2], **kw),
        lambda g1, g2, l1, l2, *args: ref_swav([g1, g2], [l1, l2], *args),
        crops,
        temperature=0.1,
        epsilon=0.05,
        iterations=3,
    )


def test_swav_matches_reference_with_queue():
    g1, g2, l1 = _prototype_scores(3, 4, 5, seed=8)
    (queue,) = _prototype_scores(1, 6, 5, seed=9)
    queue = queue.detach()
    # A queue for the first global crop only, as when the second crop's queue is not yet full.
    _check(
        lambda g1, g2, l1, **kw: swav_loss([g1, g2], [l1], **kw),
        lambda g1, g2, l1, *args: ref_swav([g1, g2], [l1], *args),
        [g1, g2, l1],
        temperature=0.1,
        epsilon=0.05,
        iterations=3,
        queue_scores=[queue, None],
    )
    assert swav_loss([g1, g2], [l1], queue_scores=[queue, None]).item() != pytest.approx(
        swav_loss([g1, g2], [l1]).item(), rel=1e-3
    )


def test_swav_swaps_by_hand():
    # Two global crops that disagree: crop a puts sample 0 on prototype 0, crop b on prototype 1.
    # Sinkhorn leaves their row softmaxes (sigmoid(2s / eps) = sigmoid(2)) as codes, and the
    # predictions are sigmoid(2s / T) = sigmoid(1). Each crop's codes must be predicted from the
    # OTHER crop, which gives a high loss; predicting a crop's own codes would give a low one.
    s = 0.05
    a = torch.tensor([[s, -s], [-s, s]])
    b = -a
    q, p = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    swapped = -(q * math.log(1 - p) + (1 - q) * math.log(p))
    own = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    loss = swav_loss([a, b], [], temperature=0.1, epsilon=0.05)
    assert loss.item() == pytest.approx(swapped, rel=1e-5)
    assert abs(loss.item() - own) > 0.5


def test_swav_gradient_by_hand():
    g1, g2 = _prototype_scores(2, 4, 3, seed=10)
    # Codes carry no gradient, so crop 1's scores get gradient only from predicting crop 2's codes:
    # -(q2 - softmax(g1 / T)) / (T * B), halved by the mean over the two global crops.
    (grad,) = torch.autograd.grad(swav_loss([g1, g2], []), g1)
    q2 = sinkhorn(g2).double()
    expected = -(q2 - torch.softmax(g1.detach() / 0.1, dim=1)) / (0.1 * 4) / 2
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_dino_matches_reference():
    s1, s2, s3, s4, t1, t2 = _pair(*[(3, 6)] * 6, seed=11)
    center = (0.3 * torch.randn(6, generator=torch.Generator().manual_seed(12), dtype=torch.float64)).requires_grad_()
    _check(
        lambda s1, s2, s3, s4, t1, t2, c, **kw: dino_loss([s1, s2, s3, s4], [t1, t2], c, **kw),
        lambda s1, s2, s3, s4, t1, t2, c, *args: ref_dino([s1, s2, s3, s4], [t1, t2], c, *args),
        [s1, s2, s3, s4, t1, t2, center],
        student_temp=0.1,
        teacher_temp=0.04,
    )


def test_dino_by_hand():
    # A uniform student costs log K whatever the teacher says.
    t = torch.tensor([[3.0, -1.0, 0.5]])
    uniform = torch.zeros(1, 3)
    assert dino_loss([uniform, uniform], [t, -t], torch.zeros(3)).item() == pytest.approx(math.log(3), rel=1e-6)
    # Equal teacher and student logits and temperatures, zero centre: each pair costs the entropy.
    logits = torch.tensor([[1.0, 0.0]])
    p = math.e / (1 + math.e)
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    loss = dino_loss([logits, logits], [logits, logits], torch.zeros(1, 2), student_temp=1.0, teacher_temp=1.0)
    assert loss.item() == pytest.approx(entropy, rel=1e-6)


def test_dino_centres_and_skips_same_view_pairs():
    s1, s2, t1, t2 = _pair((4, 5), (4, 5), (4, 5), (4, 5), seed=13)
    center = torch.zeros(1, 5)
    loss = dino_loss([s1, s2], [t1, t2], center)
    # Centring: moving the centre (other than by a constant) changes the teacher's targets.
    moved = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    assert dino_loss([s1, s2], [t1, t2], moved).item() != pytest.approx(loss.item(), rel=1e-3)
    # Same-view pairs are skipped: teacher view 1 is matched with student view 2 and vice versa,
    # so exchanging the two student views changes the loss (a sum over all pairs would not).
    assert dino_loss([s2, s1], [t1, t2], center).item() != pytest.approx(loss.item(), rel=1e-3)


def test_dino_stops_gradient_to_teacher_and_keeps_inputs():
    s1, s2, s3, t1, t2 = _pair(*[(4, 5)] * 5, seed=14)
    center = torch.randn(5, dtype=torch.float64, requires_grad=True)
    before = [x.detach().clone() for x in (s1, s2, s3, t1, t2, center)]
    dino_loss([s1, s2, s3], [t1, t2], center).backward()
    assert t1.grad is None and t2.grad is None and center.grad is None
    assert all(s.grad is not None for s in (s1, s2, s3))
    for x, y in zip((s1, s2, s3, t1, t2, center), before):
        assert torch.equal(x.detach(), y)


def test_mocov3_matches_reference():
    _check(mocov3_loss, ref_mocov3, _pair((5, 4), (5, 4), (5, 4), (5, 4), seed=15), temperature=0.2)


def test_mocov3_by_hand_and_no_gradient_to_keys():
    # Orthogonal unit vectors, T = 1: each query sees its key at cos 1 and the other key at cos 0,
    # so each ctr is 2 * log(1 + e^-1) and the symmetric loss is twice that.
    q1, q2, k1, k2 = (torch.eye(2).requires_grad_() for _ in range(4))
    loss = mocov3_loss(q1, q2, k1, k2, temperature=1.0)
    assert loss.item() == pytest.approx(4 * math.log(1 + math.exp(-1)), rel=1e-6)
    loss.backward()
    assert k1.grad is None and k2.grad is None
    assert q1.grad is not None and q2.grad is not None


def test_new_losses_run_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(16)
    x = [torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1) for _ in range(4)]
    scores = [v @ x[3].T for v in x[:3]]  # computed outside autocast, so both calls see the same inputs
    calls = [
        lambda: sinkhorn(scores[0]).sum(),
        lambda: swav_loss(scores[:2], scores[2:]),
        lambda: dino_loss(x[:3], x[2:], x[3].mean(0)),
        lambda: mocov3_loss(*x),
    ]
    for call in calls:
        plain = call()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = call()
        assert mixed.dtype == torch.float32
        assert mixed.item() == pytest.approx(plain.item(), rel=1e-6)
