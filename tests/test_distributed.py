"""Several processes give one process's numbers: the same losses and the same weights.

Each method that says ``distributed = True`` trains 2 gloo processes at global batch 64 and
one process at batch 64 from the same seed; the first 3 steps' losses agree to 1e-4 relative and
the weights after 4 steps to float tolerance. Every other method refuses nproc > 1.
"""

import os
import threading
from pathlib import Path

import pytest
import torch
from test_train import config
from tiny import stop_after

from cli.main import main as cssl
from cssl_core import distributed
from cssl_core.augment import ViewGenerator, preset_names, preset_views
from cssl_core.errors import ConfigError, CsslError
from cssl_core.methods import get_method, method_names
from cssl_core.train import load_checkpoint, loop, pretrain

STEPS = 4  # the weights after the last are compared
# The first 3 steps' losses agree to 1e-4 relative (1e-5 absolute for a loss near 0, as SimSiam's
# starts). Later ones drift by float noise: MoCo v2 on 1 thread instead of 2 is off by 1.2e-4
# at step 4.
LOSS_STEPS, LOSS_RTOL, LOSS_ATOL = 3, 1e-4, 1e-5
# Float tolerance of the weights, relative to how far training moved each tensor: one process
# on 1 thread instead of 2 (another summation order in the backward, nothing else) already
# differs by up to 3e-4 on a BN bias moved by 2e-2; a missing gradient average or gather is off
# by a whole update.
WEIGHT_RTOL = 0.05
DISTRIBUTED = [name for name in method_names() if get_method(name).distributed]
# 2 epochs of 2 steps: the rows written in epoch 1 by both ranks are read in epoch 2.
_TWO_EPOCHS = {"subset": 128, "epochs": 2}
# Per-method values that bring its cross-rank mechanism into the few steps run here.
EXTRAS = {
    "simclrv2": {"memory_size": 256},
    "swav": {"queue_length": 128, "epoch_queue_starts": 0, "local_crops": 2},
    "dino": {"local_crops": 2},  # its small-image recipe has none
    "instdisc": _TWO_EPOCHS,  # a memory bank's positives
    "deepclusterv2": _TWO_EPOCHS,  # epoch 2's k-means over the memory both ranks wrote
    # LARS's trust ratios turn the float noise of 1 thread against 2 into 28% of an update of the
    # GN + WS model in 4 steps (0.2% with SGD); the gradient average checked here is the optimiser's input.
    "byol_gnws": {"optimizer": "sgd"},
}
# Parameters whose gradient is 0 in exact arithmetic, so that they move by float noise alone (which
# Adam scales up to a step): CPC's target projection's bias shifts every target of a query's logits
# by the same amount, which the softmax ignores.
NULL_GRADIENT = {"cpc": (".target.bias",)}
# Variants of a method besides its defaults at 32 px, as (id, method, extras).
VARIANTS = [("cmc-memory_bank", "cmc", {"negatives": "memory_bank", "loss": "nce", **_TWO_EPOCHS})]
CASES = [(name, name, EXTRAS.get(name, {})) for name in DISTRIBUTED] + VARIANTS


def run_config(method, nproc, extras=None):
    # No warm-up: full-size updates from the first step, so a wrong gradient shows in the weights.
    values = {"epochs": 1, "warmup_epochs": 0, **EXTRAS.get(method, {}), **(extras or {})}
    return config(method, precision="fp32", checkpoint_every=0, nproc=nproc, **values)


def train(method, nproc, out, extras=None):
    """(losses of the first STEPS steps, final weights) of a run, as rank 0 reports them."""
    losses = []
    result = pretrain(
        run_config(method, nproc, extras),
        out,
        on_progress=lambda p: losses.append(p.loss),
        should_stop=stop_after(STEPS),
        progress_every=1,
    )
    return losses, load_checkpoint(result.checkpoint)["model"]


def initial_weights(method, extras=None):
    """The weights a run starts from (its seed's initialisation)."""
    run = run_config(method, 1, extras)
    trainer = loop.Trainer(run, Path("unused"), loop.Callbacks(), 1, None)
    return {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}


def _rank(method, out, extras=None):
    return train(method, 2, out, extras)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    cache = {}

    def get(method, case=None, extras=None):
        case = case or method
        if case not in cache:
            cache[case] = train(method, 1, tmp_path_factory.mktemp(f"{case}-1"), extras)
        return cache[case]

    return get


@pytest.mark.parametrize(("case", "method", "extras"), CASES, ids=[case for case, _, _ in CASES])
def test_two_processes_match_one(tmp_path, case, method, extras, one_process):
    losses, weights = distributed.launch(2, _rank, method, tmp_path / "two", extras)
    ref_losses, ref_weights = one_process(method, case, extras)
    assert len(losses) == len(ref_losses) == STEPS
    assert losses[:LOSS_STEPS] == pytest.approx(ref_losses[:LOSS_STEPS], rel=LOSS_RTOL, abs=LOSS_ATOL)
    assert weights.keys() == ref_weights.keys()
    initial = initial_weights(method, extras)
    for key, value in weights.items():
        if not value.is_floating_point():
            assert torch.equal(value, ref_weights[key]), key
            continue
        if key.endswith(NULL_GRADIENT.get(method, ())):
            continue
        moved = (ref_weights[key] - initial[key]).norm().item()
        off = (value - ref_weights[key]).norm().item()
        assert off <= WEIGHT_RTOL * moved + 1e-6, f"{key}: off by {off:.2e}, moved {moved:.2e}"


@pytest.mark.parametrize("preset", preset_names())
def test_a_share_of_the_batch_gets_its_rows_of_the_views(preset):
    # Every op's draws (crop, flip, jitter, grayscale, blur, solarisation, RandAugment) are the
    # whole batch's, so rank 1 of 2 makes rows 4-7 of the views one process makes of 8 images.
    make = ViewGenerator(preset_views(preset, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole = make(images, torch.Generator().manual_seed(0))
    rows = slice(4, 8)
    share = make(images[rows], torch.Generator().manual_seed(0), (8, rows))
    for view, part in zip(whole, share, strict=True):
        torch.testing.assert_close(part, view[rows], rtol=0, atol=1e-5)


@pytest.fixture
def one_process_only(monkeypatch):
    """A method that runs on one process only (every method runs on several now): cpc, marked so."""
    monkeypatch.setattr(get_method("cpc"), "distributed", False)
    return "cpc", [name for name in DISTRIBUTED if name != "cpc"]


def test_methods_without_support_refuse_several_processes(one_process_only):
    method, able = one_process_only
    with pytest.raises(ConfigError, match="methods that run on several are: " + ", ".join(able)):
        run_config(method, 2)


def test_batch_size_must_split_evenly():
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        config("simclr", nproc=3)


def test_nproc_without_launcher_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs its processes started first"):
        pretrain(run_config("simclr", 2), tmp_path)


def _fail_on_rank1():
    distributed.init_from_env("cpu")
    if distributed.rank() == 1:
        raise ValueError("rank one broke")
    distributed.barrier()


def test_a_failing_rank_fails_the_launch():
    with pytest.raises(CsslError, match="rank 1: ValueError: rank one broke"):
        distributed.launch(2, _fail_on_rank1)


def test_cli_runs_several_processes_and_prints_once(tmp_path, capfd):
    argv = ["--dataset", "synthetic", "--backbone", "small", "--batch-size", "64", "--subset", "128"]
    argv += ["--epochs", "1", "--precision", "fp32", "--set", "projector_dim=32", "--set", "projector_hidden_dim=32"]
    assert cssl(["pretrain", "--method", "simclr", "--nproc", "2", *argv, "--out", str(tmp_path / "run")]) == 0
    out = capfd.readouterr().out
    assert out.count("completed: 2 steps") == 1, out
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]["nproc"] == 2


def test_cli_refuses_nproc_for_a_method_without_support(tmp_path, capfd, one_process_only):
    method, able = one_process_only
    argv = ["pretrain", "--method", method, "--dataset", "synthetic", "--nproc", "2"]
    assert cssl([*argv, "--out", str(tmp_path / "run")]) == 2
    assert "methods that run on several are: " + ", ".join(able) in capfd.readouterr().err


def _resume_rank(method, out):
    distributed.init_from_env("cpu")  # one group for the three runs below
    try:
        run = run_config(method, 2)
        first = pretrain(run, out / "split", should_stop=stop_after(2))
        resumed = pretrain(run, out / "split", resume_from=first.checkpoint, should_stop=stop_after(2))
        straight = pretrain(run, out / "straight", should_stop=stop_after(4))
        return first.steps, resumed.steps, straight.steps
    finally:
        distributed.teardown()


def test_two_processes_resume_exactly(tmp_path):
    # MoCo v2: a queue and a momentum encoder besides the weights, all in the checkpoint.
    assert distributed.launch(2, _resume_rank, "mocov2", tmp_path) == (2, 4, 4)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _two_steps_on_two_ranks(out):
    return pretrain(run_config("simclr", 2), out, should_stop=stop_after(2)).checkpoint


def test_a_checkpoint_of_two_ranks_resumes_on_one(tmp_path, one_process):
    # Written by rank 0 of two, resumed by one process for the last 2 of STEPS steps: the weights
    # are those of one process all along. Its config keeps nproc 2 only for the world it ran on.
    checkpoint = distributed.launch(2, _two_steps_on_two_ranks, tmp_path / "two")
    assert load_checkpoint(checkpoint)["config"]["nproc"] == 2
    resumed = pretrain(run_config("simclr", 1), tmp_path / "two", resume_from=checkpoint, should_stop=stop_after(2))
    assert resumed.steps == STEPS
    weights = load_checkpoint(resumed.checkpoint)["model"]
    _, ref_weights = one_process("simclr")
    initial = initial_weights("simclr")
    for key, value in weights.items():
        if value.is_floating_point():
            moved = (ref_weights[key] - initial[key]).norm().item()
            off = (value - ref_weights[key]).norm().item()
            assert off <= WEIGHT_RTOL * moved + 1e-6, f"{key}: off by {off:.2e}, moved {moved:.2e}"


def test_cli_resumes_a_checkpoint_of_one_process_on_two(tmp_path, capfd):
    # An explicit --nproc wins over the checkpoint's: 2 steps on one process, the other 3 of the
    # epoch on two, and the weights are those of one process all along.
    run = run_config("simclr", 1)
    first = pretrain(run, tmp_path / "run", should_stop=stop_after(2))
    assert load_checkpoint(first.checkpoint)["config"]["nproc"] == 1
    argv = ["pretrain", "--resume", str(first.checkpoint), "--nproc", "2", "--out", str(tmp_path / "run")]
    assert cssl(argv) == 0
    out = capfd.readouterr().out
    assert out.count("completed: 5 steps") == 1, out
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert resumed["config"]["nproc"] == 2 and resumed["step"] == 5
    straight = load_checkpoint(pretrain(run, tmp_path / "straight").checkpoint)["model"]
    initial = initial_weights("simclr")
    for key, value in resumed["model"].items():
        if value.is_floating_point():
            moved = (straight[key] - initial[key]).norm().item()
            off = (value - straight[key]).norm().item()
            assert off <= WEIGHT_RTOL * moved + 1e-6, f"{key}: off by {off:.2e}, moved {moved:.2e}"


def _place():
    """(RANK, GROUP_RANK, every rank's RANK in rank order) in a run of 2 nodes."""
    distributed.init_from_env("cpu")
    ranks = distributed.gather_no_grad(torch.tensor([float(distributed.rank())])).tolist()
    return distributed.rank(), int(os.environ["GROUP_RANK"]), ranks


def test_two_nodes_meet_and_the_first_node_holds_rank_0():
    # Two hosts on loopback, each its own launcher. c10d's rendezvous orders nodes by address, so
    # the first node, at 127.0.0.2, would be node 1; it must hold rank 0 all the same (its rank 0
    # is the one that reports).
    endpoint = f"127.0.0.2:{distributed.free_port('127.0.0.2')}"
    places = {}

    def node(first: bool, address: str) -> None:
        meet = distributed.Rendezvous(2, endpoint, "two-nodes", first, address, timeout=60)
        places[first] = distributed.launch(1, _place, rendezvous=meet)

    other = threading.Thread(target=node, args=(False, "127.0.0.1"))
    other.start()
    node(True, "127.0.0.2")
    other.join()
    assert places == {True: (0, 0, [0.0, 1.0]), False: (1, 1, [0.0, 1.0])}


def test_a_node_that_does_not_come_fails_the_launch_as_lost():
    endpoint = f"127.0.0.1:{distributed.free_port()}"
    alone = distributed.Rendezvous(2, endpoint, "one-of-two", True, "127.0.0.1", timeout=3)
    with pytest.raises(
        distributed.LaunchFailed, match=f"the 2 nodes of the run did not all meet at {endpoint} within 3 s"
    ) as failed:
        distributed.launch(1, _place, rendezvous=alone)
    assert failed.value.lost
