"""The longest an attempt of a job may run on a worker (``CSSL_MAX_RUN_SECONDS``)."""

from __future__ import annotations

import time
from collections.abc import Callable


class RunTimeLimit:
    """Counted from when the attempt starts; 0 seconds is no limit. The runner stops a job past
    it at its next step (or before its next evaluation), as it stops a cancelled one: with a
    checkpoint, and the job fails with :meth:`message`."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock = seconds, clock
        self.started = clock()

    def passed(self) -> bool:
        return bool(self.seconds) and self.clock() - self.started >= self.seconds

    def message(self) -> str:
        return (
            f"stopped after the service's maximum run time of {self.seconds:g} s (CSSL_MAX_RUN_SECONDS); "
            "the checkpoint it wrote on stopping is kept: evaluate it with an eval job, or submit a job with "
            "a smaller config.time_budget"
        )
