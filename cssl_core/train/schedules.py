"""Per-step schedules, computed up front so the training loop only indexes them (as in DINO)."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int, final: float = 0.0) -> np.ndarray:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then a cosine decay to ``final``.

    Shape (total_steps,). The warmup starts above zero so that step 0 already moves the weights.
    """
    warmup_steps = min(warmup_steps, total_steps)
    warmup = peak * np.arange(1, warmup_steps + 1) / max(warmup_steps, 1)
    decay_steps = total_steps - warmup_steps
    t = np.arange(decay_steps) / max(decay_steps, 1)
    cosine = final + 0.5 * (peak - final) * (1 + np.cos(math.pi * t))
    return np.concatenate([warmup, cosine])


def momentum_schedule(base: float, total_steps: int, cosine: bool) -> np.ndarray:
    """EMA momentum per step: constant (MoCo), or raised from ``base`` to 1 along a cosine
    (BYOL, arXiv 2006.07733, Sec. 3.2: ``1 - (1 - base) (cos(pi k / K) + 1) / 2``)."""
    if not cosine:
        return np.full(total_steps, base)
    k = np.arange(total_steps) / max(total_steps, 1)
    return 1 - (1 - base) * (np.cos(math.pi * k) + 1) / 2


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup length in steps, at most a tenth of the run so short and time-budgeted runs still decay."""
    return int(min(warmup_epochs * steps_per_epoch, total_steps // 10))


# A time budget is first turned into a step count after timing steps 6 to 15 (the first ones are slow).
_CALIBRATION_SKIP = 5
_CALIBRATION_STEPS = 10


class BudgetFit:
    """Turns a time budget into a step count from the timed steps so far, refitted at doubling
    intervals (the first steps are slow while kernels are prepared)."""

    def __init__(self, budget: float | None, nominal_steps: int):
        self.budget = budget
        self.nominal_steps = nominal_steps
        self.active = budget is not None
        self.calibration_step, self.calibration_elapsed = _CALIBRATION_SKIP, 0.0
        self.next_fit = self.calibration_step + _CALIBRATION_STEPS

    def observe(self, step: int, elapsed: float) -> int | None:
        """The new total step count when this step refits it, else None."""
        if not self.active:
            return None
        if step == self.calibration_step:
            self.calibration_elapsed = elapsed
            return None
        if step != self.next_fit:
            return None
        seconds_per_step = (elapsed - self.calibration_elapsed) / (step - self.calibration_step)
        remaining = int((self.budget - elapsed) / seconds_per_step)
        total_steps = max(step + 1, min(self.nominal_steps, step + remaining))
        self.next_fit = self.calibration_step + 2 * (self.next_fit - self.calibration_step)
        self.active = self.next_fit < 0.9 * total_steps
        return total_steps
