"""Write ``configs/<method>.yaml``: each registered method's paper recipe for ImageNet-size
images, as ``cssl pretrain --print-config`` resolves it, under a header citing the paper.

    python scripts/write_configs.py          # rewrite the files
    python scripts/write_configs.py --check  # exit 1 if a file differs from what it would write

Run it after changing a method's defaults; ``tests/test_configfile.py`` checks that the
committed files are what it writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cssl_core.config import build_config
from cssl_core.configfile import dump_config_yaml
from cssl_core.methods import get_method, method_names

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# ImageNet-size images from an image folder, with the paper's values (not the small-image recipe).
IMAGENET = {"dataset": "imagefolder", "image_size": 224, "recipe": "paper"}
# The encoder each paper reports its main ImageNet results with, where that is not a ResNet-50:
# DINO's and MoCo v3's ViT-S/16, and the ResNet-18 of Ye et al.'s experiments.
PAPER_BACKBONES = {"dino": "vit_small", "mocov3": "vit_small", "invaspread": "resnet18"}


def paper_config(method: str) -> dict:
    """The method's resolved config (``PretrainConfig.to_dict()``) for the paper's setting."""
    backbone = PAPER_BACKBONES.get(method, "resnet50")
    return build_config(method, {**IMAGENET, "backbone": backbone}).to_dict()


def render(method: str) -> str:
    cls = get_method(method)
    config = paper_config(method)
    header = [
        f"# {cls.paper}",
        f"# arXiv:{cls.arxiv} (https://arxiv.org/abs/{cls.arxiv})",
        f"# The paper's recipe (recipe: paper) on {config['backbone']}, for ImageNet-size images (224 px) in an",
        "# image folder. Train with:",
        f"#   cssl pretrain --config configs/{method}.yaml --data PATH",
        "# Written by scripts/write_configs.py from the method's defaults; rerun it rather than editing this file.",
    ]
    return "\n".join(header) + "\n" + dump_config_yaml(config)


def expected_files() -> dict[Path, str]:
    return {CONFIGS / f"{method}.yaml": render(method) for method in method_names()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file differs")
    args = parser.parse_args(argv)
    files = expected_files()
    stale = sorted(
        {path for path, text in files.items() if not path.exists() or path.read_text() != text}
        | {path for path in CONFIGS.glob("*.yaml") if path not in files}
    )
    if args.check:
        for path in stale:
            print(f"{path.relative_to(CONFIGS.parent)} differs from what scripts/write_configs.py writes")
        return 1 if stale else 0
    CONFIGS.mkdir(exist_ok=True)
    for path in stale:
        if path in files:
            path.write_text(files[path])
        else:
            path.unlink()  # a method that is no longer registered
        print(path.relative_to(CONFIGS.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
