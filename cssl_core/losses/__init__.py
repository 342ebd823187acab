"""Losses as small pure functions over (N, D) tensors, one per file."""

from cssl_core.losses.barlow_twins import barlow_twins
from cssl_core.losses.cpc import cpc_loss
from cssl_core.losses.dino import dino_loss
from cssl_core.losses.info_nce import info_nce
from cssl_core.losses.invaspread import invaspread_loss
from cssl_core.losses.mocov3 import mocov3_loss
from cssl_core.losses.nce import Z_ESTIMATES, nce_log_z, nce_loss, nce_posteriors, update_log_z
from cssl_core.losses.nce_softmax import nce_softmax_loss
from cssl_core.losses.negative_cosine import negative_cosine
from cssl_core.losses.nt_xent import nt_xent
from cssl_core.losses.sinkhorn import sinkhorn
from cssl_core.losses.swav import swav_loss

__all__ = [
    "Z_ESTIMATES",
    "barlow_twins",
    "cpc_loss",
    "dino_loss",
    "info_nce",
    "invaspread_loss",
    "mocov3_loss",
    "nce_log_z",
    "nce_loss",
    "nce_posteriors",
    "nce_softmax_loss",
    "negative_cosine",
    "nt_xent",
    "sinkhorn",
    "swav_loss",
    "update_log_z",
]
