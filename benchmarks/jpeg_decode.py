"""JPEG decoding per CPU core, the ceiling of any data path that reads images from files: the
decoders at hand side by side on generated ImageNet-sized images (500x375, quality 90), each
decoding to full size and, where it can, straight to about the 224-px a recipe crops.

    .venv/bin/python -m benchmarks.jpeg_decode --images 200

- ``pillow``: ``Image.open(...).convert("RGB")``, the full image;
- ``pillow_draft``: ``Image.draft("RGB", (224, 224))`` first: libjpeg decodes at 1/2 scale
  (the DCT scaling the data sets' in-memory path uses; a RandomResizedCrop from the original
  then loses detail in crops smaller than half the image);
- ``torchvision``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo inside torchvision);
- ``simplejpeg``: when installed (``pip install simplejpeg``), full size and at 1/2 scale.

One process, one thread (``torch.set_num_threads(1)``): images/s per core.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

SIZE = (500, 375)


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Smooth random images (like photographs, unlike noise, which JPEG cannot compress)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(SIZE, Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (SIZE[1], SIZE[0], 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def pillow(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").size


def pillow_draft(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (224, 224))
        return image.convert("RGB").size


def torchvision_decode(data: bytes) -> tuple[int, int]:
    from torchvision.io import decode_jpeg

    image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return image.shape[2], image.shape[1]


def decoders() -> dict[str, Callable[[bytes], tuple[int, int]]]:
    found = {"pillow": pillow, "pillow_draft": pillow_draft, "torchvision": torchvision_decode}
    try:
        import simplejpeg
    except ImportError:
        return found

    def simple(data: bytes) -> tuple[int, int]:
        image = simplejpeg.decode_jpeg(data, colorspace="RGB")
        return image.shape[1], image.shape[0]

    def simple_half(data: bytes) -> tuple[int, int]:
        image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=188, min_width=250)
        return image.shape[1], image.shape[0]

    return found | {"simplejpeg": simple, "simplejpeg_half": simple_half}


def measure(decode: Callable[[bytes], tuple[int, int]], images: list[bytes], repeats: int) -> dict:
    size = decode(images[0])  # warm-up, and the size it gives
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for data in images:
            decode(data)
        best = min(best, time.perf_counter() - start)
    return {"images_per_second": round(len(images) / best, 1), "output_size": list(size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many passes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = make_jpegs(args.images)
    mean_kb = sum(map(len, images)) / len(images) / 1024
    for name, decode in decoders().items():
        row = {"decoder": name, **measure(decode, images, args.repeats), "jpeg_kib": round(mean_kb, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
