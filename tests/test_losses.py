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
    nce_loss,
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
            loss = loss + ((1 - c) ** 2 if i == j else lambd * c**2)
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


def ref_nt_xent_with_memory(z1, z2, memory, t):
    # SimCLR v2's memory: each anchor's softmax also runs over the K memory rows (no gradient into them).
    z = [_unit(v) for v in torch.cat([z1, z2])]
    mem = [_unit(m.detach()) for m in memory]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denom = sum(torch.exp(z[i] @ z[k] / t) for k in range(n2) if k != i) + sum(torch.exp(z[i] @ m / t) for m in mem)
        total = total - torch.log(torch.exp(z[i] @ z[j] / t) / denom)
    return total / n2


def test_nt_xent_with_memory_matches_reference():
    z1, z2, memory = _pair((5, 4), (5, 4), (7, 4), seed=3)
    _check(lambda a, b, m, t: nt_xent(a, b, t, memory=m), ref_nt_xent_with_memory, [z1, z2, memory], t=0.3)
    assert torch.autograd.grad(nt_xent(z1, z2, 0.3, memory=memory), memory, allow_unused=True)[0] is None


def test_nt_xent_memory_by_hand():
    # As the case above plus one memory row orthogonal to both anchors' directions: one more e^0 term.
    e = torch.eye(3)[:2]
    memory = torch.eye(3)[2:]
    assert nt_xent(e, e.clone(), 1.0, memory=memory).item() == pytest.approx(math.log(math.e + 3) - 1, rel=1e-6)


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
    assert negative_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == pytest.approx(
        -1 / math.sqrt(2)
    )


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


def ref_nce(pos_logits, neg_logits, log_z, num_samples):
    # InstDisc Eq. 5-7, one sample at a time: P(i|v) = exp(logit) / Z, h = P / (P + K Pn), Pn = 1 / n;
    # lemniscate's NCECriterion sums over the batch and divides by its size (it also adds eps = 1e-7).
    z = math.exp(log_z)
    k = neg_logits.shape[1]
    noise = k / num_samples
    total = 0.0
    for pos, negs in zip(pos_logits, neg_logits):
        p = torch.exp(pos) / z
        total = total - torch.log(p / (p + noise))
        for neg in negs:
            p = torch.exp(neg) / z
            total = total - torch.log(noise / (p + noise))
    return total / len(pos_logits)


def test_nce_matches_reference():
    pos, neg = _pair((5,), (5, 7), seed=17)
    _check(nce_loss, ref_nce, [pos, neg], log_z=2.5, num_samples=40)


def test_nce_by_hand_and_no_gradient_to_log_z():
    # K = 1 noise sample, n = 2 (K Pn = 1/2), Z = 1, logits 0: P = 1, so h(pos) = 2/3, 1 - h(neg) = 1/3
    # and the loss is -(log 2/3 + log 1/3) = log 9/2 for each of the two (equal) rows of the batch.
    pos = torch.zeros(2, requires_grad=True)
    neg = torch.zeros(2, 1, requires_grad=True)
    log_z = torch.zeros((), requires_grad=True)
    loss = nce_loss(pos, neg, log_z, 2)
    assert loss.item() == pytest.approx(math.log(4.5), rel=1e-6)
    # d/dpos -log h = -(1 - h) = -1/3, d/dneg -log(1 - h) = h = 2/3, each over the batch of 2.
    g_pos, g_neg, g_z = torch.autograd.grad(loss, [pos, neg, log_z], allow_unused=True)
    torch.testing.assert_close(g_pos, torch.full((2,), -1 / 6))
    torch.testing.assert_close(g_neg, torch.full((2, 1), 1 / 3))
    assert g_z is None


def test_nce_is_finite_at_extreme_logits_and_float32_under_autocast():
    # Logits of +-1/0.07 scaled by 100: exp() of them overflows float32, the log-sigmoid form does not.
    pos = torch.tensor([1400.0, -1400.0], requires_grad=True)
    neg = torch.tensor([[1400.0, -1400.0], [-1400.0, 1400.0]], requires_grad=True)
    loss = nce_loss(pos, neg, 3.0, 1000)
    (g_pos,) = torch.autograd.grad(loss, pos)
    assert torch.isfinite(loss) and torch.isfinite(g_pos).all()
    g = torch.Generator().manual_seed(18)
    pos, neg = torch.randn(4, generator=g), torch.randn(4, 6, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = nce_loss(pos, neg, 1.0, 100)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(nce_loss(pos, neg, 1.0, 100).item(), rel=1e-6)


from cssl_core.losses import invaspread_loss  # noqa: E402


def ref_invaspread(z1, z2, t, instances_constant=True):
    # Ye et al. Sec. 3 over both halves of the batch, as the official BatchCriterion: for each of the
    # 2N features x_i, P(j | x_i) = exp(x_j . x_i / t) / sum_{k != i} exp(x_k . x_i / t); the loss is
    # -(1/2N) sum_i [log P(p(i) | x_i) + sum_{j != i, p(i)} log(1 - P(j | x_i))], p(i) = i's other view.
    # The official code takes the instance side x_j, x_k as constants (``.data``).
    x = [_unit(v) for v in torch.cat([z1, z2])]
    instance = [v.detach() for v in x] if instances_constant else x
    n2 = len(x)
    total = 0.0
    for i in range(n2):
        partner = (i + n2 // 2) % n2
        denom = sum(torch.exp(x[i] @ instance[k] / t) for k in range(n2) if k != i)
        total = total - torch.log(torch.exp(x[i] @ instance[partner] / t) / denom)
        for j in range(n2):
            if j not in (i, partner):
                total = total - torch.log(1 - torch.exp(x[i] @ instance[j] / t) / denom)
    return total / n2


def official_batch_criterion(z1, z2, t):
    # BatchAverage.py ``BatchCriterion.forward`` (negM = 1), on the official model's L2-normalised
    # features; ``.data`` written as ``.detach()``, the in-place ops out of place, no ``.cuda()``.
    x = torch.cat([z1, z2])
    x = x / x.pow(2).sum(1, keepdim=True).pow(0.5)
    batch_size = x.size(0)
    reordered_x = torch.cat((x.narrow(0, batch_size // 2, batch_size // 2), x.narrow(0, 0, batch_size // 2)), 0)
    pos = (x * reordered_x.detach()).sum(1).div(t).exp()
    all_prob = torch.mm(x, x.t().detach()).div(t).exp() * (1 - torch.eye(batch_size, dtype=x.dtype))
    all_div = all_prob.sum(1)
    lnPmt = torch.div(pos, all_div)
    lnPon = torch.div(all_prob, all_div.repeat(batch_size, 1).t())
    lnPon = (-lnPon.add(-1)).log()
    lnPon = lnPon.sum(1) - (-lnPmt.add(-1)).log()
    lnPmt = lnPmt.log()
    return -(lnPmt.sum(0) + lnPon.sum(0)) / batch_size


def test_invaspread_matches_reference_and_the_official_code():
    z1, z2 = _pair((5, 4), (5, 4), seed=19)
    _check(invaspread_loss, ref_invaspread, [z1, z2], temperature=0.5)
    _check(invaspread_loss, official_batch_criterion, [z1, z2], temperature=0.5)


def test_invaspread_by_hand():
    # z1 = z2 = (e1, e2), T = 1: each of the 4 rows sees its partner at cos 1 and two negatives at
    # cos 0, so P(partner) = e / (e + 2), each negative's P = 1 / (e + 2), and the row's loss is
    # -log(e / (e + 2)) - 2 log((e + 1) / (e + 2)) = 3 log(e + 2) - 1 - 2 log(e + 1).
    e = torch.eye(2)
    expected = 3 * math.log(math.e + 2) - 1 - 2 * math.log(math.e + 1)
    assert invaspread_loss(e, e.clone(), temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # Swapping the pairs of the second half makes each partner a cos-0 feature and a negative a cos-1 one.
    assert invaspread_loss(e, e.flip(0), temperature=1.0).item() > expected + 1.0


def test_invaspread_instances_are_constants_as_in_the_official_code():
    z1, z2 = _pair((4, 3), (4, 3), seed=20)
    ours = torch.autograd.grad(invaspread_loss(z1, z2, 0.5), [z1, z2])
    full = torch.autograd.grad(ref_invaspread(z1, z2, 0.5, instances_constant=False), [z1, z2])
    assert all(g.abs().sum() > 0 for g in ours)  # both views get a gradient, as queries
    assert not all(torch.allclose(a.double(), b, rtol=1e-3) for a, b in zip(ours, full))
    g = torch.Generator().manual_seed(21)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = invaspread_loss(a, b)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(invaspread_loss(a, b).item(), rel=1e-6)


from cssl_core.losses import nce_softmax_loss  # noqa: E402


def ref_nce_softmax(pos_logits, neg_logits):
    # CMC's NCESoftmaxLoss, one anchor at a time: -log of the positive's share of the 1 + K exponentials.
    total = 0.0
    for pos, negs in zip(pos_logits, neg_logits):
        total = total - torch.log(torch.exp(pos) / (torch.exp(pos) + sum(torch.exp(n) for n in negs)))
    return total / len(pos_logits)


def test_nce_softmax_matches_reference():
    pos, neg = _pair((5,), (5, 7), seed=22)
    _check(nce_softmax_loss, ref_nce_softmax, [pos, neg])


def test_nce_softmax_by_hand_and_float32_under_autocast():
    # Logits 0 for the positive and K = 2 noise samples: log 3 per anchor; d/dpos = (1/3 - 1) / N,
    # d/dneg = (1/3) / N for the batch of N = 2.
    pos = torch.zeros(2, requires_grad=True)
    neg = torch.zeros(2, 2, requires_grad=True)
    loss = nce_softmax_loss(pos, neg)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)
    g_pos, g_neg = torch.autograd.grad(loss, [pos, neg])
    torch.testing.assert_close(g_pos, torch.full((2,), -1 / 3))
    torch.testing.assert_close(g_neg, torch.full((2, 2), 1 / 6))
    g = torch.Generator().manual_seed(23)
    pos, neg = torch.randn(4, generator=g) * 14, torch.randn(4, 6, generator=g) * 14
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = nce_softmax_loss(pos, neg)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(nce_softmax_loss(pos, neg).item(), rel=1e-6)


from cssl_core.losses import cpc_loss  # noqa: E402


def ref_cpc(predictions, targets, offset):
    # CPC (v1 Eq. 4, v2's pseudo-code), one prediction at a time: the prediction made at (image a,
    # row i, column j) scores every target of the batch by an inner product; the loss is
    # -log softmax at target (a, i + k, j), averaged over the predictions whose target row exists.
    n, h, w, _ = targets.shape
    everything = [targets[a, b, c] for a in range(n) for b in range(h) for c in range(w)]
    total, count = 0.0, 0
    for a in range(n):
        for i in range(h - offset):
            for j in range(w):
                p = predictions[a, i, j]
                denom = sum(torch.exp(p @ t) for t in everything)
                total = total - torch.log(torch.exp(p @ targets[a, i + offset, j]) / denom)
                count += 1
    return total / count


@pytest.mark.parametrize("offset", [1, 2])
def test_cpc_matches_reference(offset):
    predictions, targets = _pair((2, 4, 3, 5), (2, 4, 3, 5), seed=22)
    _check(cpc_loss, ref_cpc, [predictions, targets], offset=offset)


def test_cpc_by_hand():
    # Two images of a 2 x 1 grid, both with targets (e1, e2) down the column, both predicting e2
    # from row 0. Offset 1: each prediction scores the 4 targets at (0, 1, 0, 1) and its own row-1
    # patch is one of the two 1s, the other image's being a negative: P = e / (2e + 2).
    targets = torch.eye(2).expand(2, 2, 2).reshape(2, 2, 1, 2)
    predictions = torch.zeros(2, 2, 1, 2)
    predictions[:, 0, 0, 1] = 1.0
    predictions[:, 1] = 7.0  # row 1 has no row below it: it predicts nothing
    loss = cpc_loss(predictions.requires_grad_(), targets, offset=1)
    assert loss.item() == pytest.approx(math.log(2 * math.e + 2) - 1, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, predictions)
    assert torch.equal(grad[:, 1], torch.zeros(2, 1, 2))
    with pytest.raises(ValueError, match="offset"):
        cpc_loss(predictions, targets, offset=2)
    g = torch.Generator().manual_seed(23)
    p, t = torch.randn(2, 3, 3, 8, generator=g), torch.randn(2, 3, 3, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = cpc_loss(p, t, 1)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(cpc_loss(p, t, 1).item(), rel=1e-6)
