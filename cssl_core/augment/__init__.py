"""Batched, on-device view augmentation: uint8 batches in, normalised float views out.

``build_views(preset, image_size, mean, std)`` gives a :class:`ViewGenerator`; calling it
with a uint8 batch (N, 3, H, W) and a CPU ``torch.Generator`` returns one float32 tensor per
view. The ops (:mod:`.ops`, :mod:`.jitter`, :mod:`.randaugment`) draw their parameters per
image and process the whole batch in a few kernels, on whatever device the images are on.
"""

from cssl_core.augment.pipeline import ViewGenerator, ViewSpec, finish_view, make_view, sample_crop_flip
from cssl_core.augment.presets import build_views, local_views, preset_names, preset_views, scale_jitter

__all__ = [
    "ViewGenerator",
    "ViewSpec",
    "build_views",
    "finish_view",
    "local_views",
    "make_view",
    "preset_names",
    "preset_views",
    "sample_crop_flip",
    "scale_jitter",
]
