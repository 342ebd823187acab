"""`make demo`: pretrain SimCLR on the bundled digits for 90 s of training, then compare the
backbone's kNN and linear-probe accuracy with the same backbone at random initialisation."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from cli.main import main as cssl


def main() -> int:
    out = Path(tempfile.mkdtemp(prefix="cssl-demo-"))
    code = cssl(["pretrain", "--method", "simclr", "--dataset", "digits", "--backbone", "small",
                 "--batch-size", "128", "--epochs", "300", "--time-budget", "90", "--out", str(out)])
    if code:
        return code
    checkpoint = out / "checkpoints" / "last.pt"
    for protocol in ("knn", "linear"):
        for extra in ([], ["--random-init"]):
            code = cssl(["eval", str(checkpoint), "--protocol", protocol, *extra]) or code
    return code


if __name__ == "__main__":
    sys.exit(main())
