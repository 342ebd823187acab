"""Losses as small pure functions over (N, D) tensors, one per file."""

from cssl_core.losses.barlow_twins import barlow_twins
from cssl_core.losses.info_nce import info_nce
from cssl_core.losses.negative_cosine import negative_cosine
from cssl_core.losses.nt_xent import nt_xent

__all__ = ["barlow_twins", "info_nce", "negative_cosine", "nt_xent"]
