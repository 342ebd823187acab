"""What several test files share: heads small enough for a test step on a CPU (every registered
method has an entry), and a cancel callback that stops a run after a number of steps."""

TINY_HEADS: dict[str, dict] = {
    "simclr": {},
    "mocov2": {"queue_size": 256},
    "mocov1": {"queue_size": 256},
    "byol": {"projector_hidden_dim": 64, "predictor_hidden_dim": 64},
    "simsiam": {"projector_dim": 64, "predictor_hidden_dim": 16},
    "barlow_twins": {"projector_dim": 64},
    "deepclusterv2": {"nmb_prototypes": (8, 12, 16), "projector_hidden_dim": 64},
    "swav": {"projector_hidden_dim": 64, "nmb_prototypes": 30, "local_crops": 2},
    "dino": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32, "local_crops": 2},
    "mocov3": {"projector_hidden_dim": 64, "predictor_hidden_dim": 64},
    "byol_gnws": {"projector_hidden_dim": 64, "predictor_hidden_dim": 64},
    "simclrv2": {"projector_hidden_dim": 64},
    "instdisc": {"num_negatives": 16},
    "cmc": {"num_negatives": 16, "negatives": "memory_bank"},
    "invaspread": {},
    "cpc": {"patch_size": 16, "patch_stride": 8, "max_offset": 2, "directions": 2, "context_blocks": 1,
            "context_dim": 32, "target_dim": 16},
    "infomin": {"queue_size": 256},
}


def stop_after(calls: int):
    """A ``should_stop`` callback that says stop on its ``calls``-th call (once per step)."""
    count = {"n": 0}

    def should_stop() -> bool:
        count["n"] += 1
        return count["n"] >= calls
    return should_stop
