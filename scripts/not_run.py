"""One plain line from pytest's JUnit XML report: which tests did not run and why (or that
all did). ``scripts/test.sh`` prints it last.

    python scripts/not_run.py report.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def summary(report: Path) -> str:
    cases = list(ET.parse(report).getroot().iter("testcase"))
    by_reason: dict[str, list[str]] = defaultdict(list)
    for case in cases:
        skipped = case.find("skipped")
        if skipped is None or skipped.get("type") == "pytest.xfail":
            continue
        reason = (skipped.get("message") or "no reason given").removeprefix("Skipped: ").strip()
        module = case.get("classname", "").replace(".", "/")
        by_reason[reason].append(f"{module}.py::{case.get('name')}")
    if not cases:
        return "no test was selected"
    if not by_reason:
        return f"all {len(cases)} tests ran"
    count = sum(map(len, by_reason.values()))
    reasons = " ".join(f"{', '.join(names)}: {reason.rstrip('.')}." for reason, names in by_reason.items())
    return f"not run: {count} of {len(cases)} tests. {reasons}"


if __name__ == "__main__":
    path = Path(sys.argv[1])
    print(summary(path) if path.is_file() else "no test report was written (pytest did not get to run the tests)")
