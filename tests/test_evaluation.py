import math

import pytest
import torch

from cssl_core.evaluation import knn_predict, knn_scores


def ref_knn(train, labels, test, num_classes, k, t):
    # InstDisc Sec. 3.4, row by row: the k most similar training rows vote exp(cos / T) for their class.
    out = []
    for x in test:
        sims = [(float(x @ y / (x.norm() * y.norm())), int(c)) for y, c in zip(train, labels)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, c in sims[:k]:
            votes[c] += math.exp(s / t)
        out.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(out)


def test_knn_matches_reference():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(25, 8, generator=g)
    ours = knn_predict(train, labels, test, num_classes=4, k=7, temperature=0.1)
    assert ours.shape == (25,)
    assert torch.equal(ours, ref_knn(train, labels, test, 4, 7, 0.1))


def test_knn_by_hand_and_chunking():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[0.1, 1.0], [1.0, 0.05]])
    assert knn_predict(train, labels, test, num_classes=2, k=1).tolist() == [1, 0]
    # k larger than the bank is clipped; chunked scoring equals unchunked.
    full = knn_scores(train, labels, test, 2, k=10, temperature=0.5)
    chunked = knn_scores(train, labels, test, 2, k=10, temperature=0.5, chunk_size=1)
    torch.testing.assert_close(full, chunked)


def test_linear_probe_separates_separable_features():
    from cssl_core.evaluation import LinearProbeParams
    from cssl_core.evaluation.linear import linear_probe_logits, train_linear_probe

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 3
    labels = torch.randint(0, 5, (500,), generator=g)
    features = centres[labels] + torch.randn(500, 16, generator=g)
    layer, mean, std = train_linear_probe(features[:400], labels[:400], 5, LinearProbeParams(epochs=20, batch_size=64))
    accuracy = (linear_probe_logits(layer, mean, std, features[400:]).argmax(1) == labels[400:]).float().mean()
    assert accuracy > 0.95


def test_protocol_params_are_typed_and_checked():
    from cssl_core.errors import ConfigError
    from cssl_core.evaluation import KnnParams, LinearProbeParams, protocol_params

    assert protocol_params("knn", {"k": "20", "temperature": "0.07"}) == KnnParams(k=20, temperature=0.07)
    assert protocol_params("linear") == LinearProbeParams()
    for protocol, bad, words in [
        ("knn", {"k": 0}, "k must be at least 1"),
        ("knn", {"k": 2.5}, "k must be of type int"),
        ("knn", {"neighbours": 5}, "valid: k, temperature"),
        ("linear", {"lr": -1}, "lr must be greater than 0, got -1.0"),
        ("svm", {}, "known protocols: attention, distill, embedding, finetune, knn, linear"),
    ]:
        with pytest.raises(ConfigError, match=words):
            protocol_params(protocol, bad)
