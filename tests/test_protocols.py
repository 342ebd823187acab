"""The protocol contract: a protocol defined anywhere (here, in this file) is registered by its
decorator and then accepted, run and refused by its declared facts alone; every registered
protocol returns what it declares."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import stop_after

from cssl_core.config import build_config, check_bounds, option
from cssl_core.errors import ConfigError
from cssl_core.evaluation import (
    Protocol,
    ProtocolOutput,
    evaluate_backbone,
    evaluate_checkpoint,
    extract_features,
    get_protocol,
    protocol_names,
    protocol_params,
    register_protocol,
    topk_accuracy,
)
from cssl_core.evaluation import protocol as registry
from cssl_core.evaluation.protocol import CHECKPOINT_EXTRA
from cssl_core.train import pretrain

METRICS = ("cosine", "euclidean")


def define_centroid_protocol() -> type[Protocol]:
    """Nearest class centroid on frozen features: a protocol nothing outside this file knows."""

    @dataclass
    class CentroidParams:
        metric: str = option("cosine", "distance to a class centroid: cosine or euclidean")
        shrink: float = option(0.0, "pull each centroid toward the mean of all of them by this fraction", ge=0, le=1)

        def validate(self) -> None:
            check_bounds(self)
            if self.metric not in METRICS:
                raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")

    @register_protocol
    class CentroidProtocol(Protocol):
        name = "centroid"
        summary = "nearest class centroid of the frozen training features"
        params_cls = CentroidParams
        extra = {"centroid_norm": "the mean L2 norm of the class centroids"}

        def run_features(self, backbone, data, params, mean, std, device) -> ProtocolOutput:
            train = extract_features(backbone, data.train.images, mean, std, device)
            test = extract_features(backbone, data.test.images, mean, std, device)
            centroids = torch.stack([train[data.train.labels == c].mean(0) for c in range(len(data.classes))])
            centroids = (1 - params.shrink) * centroids + params.shrink * centroids.mean(0)
            if params.metric == "cosine":
                scores = F.normalize(test, dim=1) @ F.normalize(centroids, dim=1).T
            else:
                scores = -torch.cdist(test, centroids)
            top1, top5 = topk_accuracy(scores, data.test.labels)
            return ProtocolOutput(
                top1=top1,
                top5=top5,
                num_train=len(train),
                num_test=len(test),
                extra={"centroid_norm": centroids.norm(dim=1).mean().item()},
            )

    return CentroidProtocol


@pytest.fixture()
def fresh_registry(monkeypatch):
    """The registry as it is, restored after the test: what a test registers goes with it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    """Two steps of SimCLR on the small convnet over the synthetic images (500 train, 200 test, 32 px)."""
    config = build_config(
        "simclr",
        {"dataset": "synthetic", "backbone": "small", "batch_size": 32, "subset": 64, "epochs": 1, "knn_every": 0},
    )
    return Path(pretrain(config, tmp_path_factory.mktemp("small"), should_stop=stop_after(2)).checkpoint)


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory) -> Path:
    config = build_config(
        "simclr",
        {"dataset": "synthetic", "backbone": "vit_tiny", "batch_size": 10, "subset": 20, "epochs": 1, "knn_every": 0},
    )
    return Path(pretrain(config, tmp_path_factory.mktemp("vit"), should_stop=stop_after(1)).checkpoint)


def test_a_protocol_defined_in_a_test_file_is_accepted_and_runs(fresh_registry, small_checkpoint):
    define_centroid_protocol()
    assert "centroid" in protocol_names()
    assert protocol_params("centroid", {"shrink": "0.5"}).shrink == 0.5  # typed from a command-line string
    with pytest.raises(ConfigError, match="metric must be one of cosine, euclidean"):
        protocol_params("centroid", {"metric": "manhattan"})
    with pytest.raises(ConfigError, match="shrink must be in"):
        protocol_params("centroid", {"shrink": 2})
    result = evaluate_checkpoint(small_checkpoint, "centroid", device="cpu", metric="euclidean")
    assert result.protocol == "centroid" and result.parameters == {"metric": "euclidean", "shrink": 0.0}
    assert 0 <= result.top1 <= 100 and result.top5 is not None and (result.num_train, result.num_test) == (500, 200)
    assert set(result.extra) == {"centroid_norm", "random_init"} and result.extra["centroid_norm"] > 0
    assert evaluate_checkpoint(small_checkpoint, "centroid", device="cpu", random_init=True).extra["random_init"]


def test_the_registry_lists_it_and_forgets_it_with_the_test(fresh_registry):
    assert "centroid" not in protocol_names()
    with pytest.raises(ConfigError, match="unknown protocol 'centroid'; known protocols: attention, distill"):
        protocol_params("centroid")


def test_a_vit_only_protocol_refuses_another_backbone_by_its_declared_fact(fresh_registry, small_checkpoint):
    ran = []

    @dataclass
    class NoParams:
        def validate(self) -> None:
            pass

    @register_protocol
    class PatchCount(Protocol):
        name = "patch_count"
        summary = "the number of patches a ViT cuts a test image into"
        params_cls = NoParams
        needs = "checkpoint"
        backbone = "vit"
        accuracy = False
        extra = {"patches": "patches per image"}

        def run_checkpoint(self, checkpoint, data, params) -> ProtocolOutput:
            ran.append(True)
            return ProtocolOutput(top1=None, top5=None, num_train=0, num_test=0, extra={"patches": 64})

    # A data set that does not exist: the refusal comes before any data is loaded.
    refusal = r"the patch_count protocol takes a ViT backbone only \(vit_small, vit_tiny\); this checkpoint's backbone"
    with pytest.raises(ConfigError, match=refusal + " is 'small'"):
        evaluate_checkpoint(small_checkpoint, "patch_count", dataset="no-such-data", device="cpu")
    assert not ran


def test_a_features_protocol_that_takes_vits_only_refuses_another_encoder(fresh_registry):
    @register_protocol
    class VitKnn(get_protocol("knn")):
        name = "vit_knn"
        summary = "kNN on a ViT's features"
        backbone = "vit"

    with pytest.raises(ConfigError, match="the vit_knn protocol takes a ViT backbone only.*a Linear"):
        evaluate_backbone(
            torch.nn.Linear(3, 2), None, "vit_knn", mean=[0.0] * 3, std=[1.0] * 3, device=torch.device("cpu")
        )


@pytest.mark.parametrize(
    "declaration, words",
    [
        ({"needs": "checkpoint"}, "needs checkpoint, so it must override run_checkpoint"),
        ({"needs": "labels"}, "needs must be one of features, checkpoint"),
        ({"backbone": "resnet"}, "backbone must be 'any' or 'vit'"),
        ({"extra": {"top1": "a clash"}}, "extra keys top1 are taken"),
        ({"extra": {"random_init": "a clash"}}, "extra keys random_init are taken"),
        ({"summary": ""}, "must declare a name and a one-line summary"),
        ({"params_cls": dict}, "params_cls must be a dataclass with a validate"),
        ({"name": "knn"}, "protocol 'knn' is already registered by cssl_core.evaluation.knn.KnnProtocol"),
    ],
)
def test_a_declaration_that_cannot_work_is_refused_when_registered(fresh_registry, declaration, words):
    knn = get_protocol("knn")
    attributes = {
        "name": "odd",
        "summary": "a protocol with one wrong declaration",
        "params_cls": knn.params_cls,
        "run_features": knn.run_features,
        **declaration,
    }
    with pytest.raises(TypeError, match=words):
        register_protocol(type("Odd", (Protocol,), attributes))
    assert "odd" not in protocol_names()


# Each built-in protocol at parameters that keep its run to seconds on the synthetic images.
QUICK = {
    "knn": {"k": 20},
    "linear": {"epochs": 2},
    "finetune": {"epochs": 1, "label_fraction": 0.2},
    "distill": {"epochs": 1, "finetune_epochs": 1, "label_fraction": 0.2},
    "embedding": {"max_points": 50},
    "attention": {"num_images": 2},
}


def test_every_registered_protocol_has_quick_parameters_here():
    assert set(QUICK) == set(protocol_names())


@pytest.mark.parametrize("name", sorted(QUICK))
def test_every_protocol_returns_what_it_declares(name, small_checkpoint, vit_checkpoint):
    cls = get_protocol(name)
    checkpoint = vit_checkpoint if cls.backbone == "vit" else small_checkpoint
    result = evaluate_checkpoint(checkpoint, name, device="cpu", **QUICK[name])
    assert set(result.extra) == set(cls.extra) | set(CHECKPOINT_EXTRA) == set(cls.facts()["extra"])
    if cls.accuracy:
        assert 0 <= result.top1 <= 100 and 0 <= result.top5 <= 100  # ten classes: top-5 too
    else:
        assert result.top1 is None and result.top5 is None
    assert result.parameters == {**dataclasses.asdict(cls.params_cls()), **QUICK[name]}
    assert result.num_test > 0 and result.protocol == name
