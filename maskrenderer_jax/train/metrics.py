"""What a run reports: console lines (step, step/s, ETA, losses), TensorBoard event files
(every loss term, gradient norms, learning rate, step time, image grids) and metrics.jsonl in
the workdir. Only process 0 writes; every process calls (the window is a computation over the
metrics' global arrays).

The steps' metrics stay on the device: `MetricsWriter.add` sums them there (`accumulate`)
without waiting for the step, so the host runs ahead of the device between the reads, which
happen only where the loop asks: `non_finite` (before a checkpoint) and `write` (a log step).
"""

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tensorboardX

from maskrenderer_jax import media

# Console columns, in this order, when present.
CONSOLE_KEYS = ("generator", "discriminator", "perceptual", "triplet")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def tensorboard_tag(key: str) -> str:
    """'perceptual' -> 'loss/perceptual'; 'grad_norm/...' stays; timing and lr get sections."""
    if "/" in key:
        return key
    if key == "learning_rate":
        return "optim/learning_rate"
    if key in ("steps_per_second", "step_seconds"):
        return f"time/{key}"
    return f"loss/{key}"


@jax.jit
def accumulate(window: dict, metrics: dict) -> dict:
    """`window` ({} to start) with one more step's `metrics` ({name: scalar}):
    {'steps': the steps added, 'sums': {name: the sum of its values},
    'first_non_finite': {name: the 0-based index among the added steps of its first NaN or
    infinite value, -1 while there is none}}. A name absent from some steps (the triplet term
    before its phase) is summed over the steps that have it."""
    steps = window.get("steps", jnp.zeros((), jnp.int32))
    sums, first = dict(window.get("sums", {})), dict(window.get("first_non_finite", {}))
    for name, value in metrics.items():
        value = value.astype(jnp.float32)
        sums[name] = sums.get(name, jnp.zeros((), jnp.float32)) + value
        seen = first.get(name, jnp.full((), -1, jnp.int32))
        first[name] = jnp.where((seen < 0) & ~jnp.isfinite(value), steps, seen)
    return {"steps": steps + 1, "sums": sums, "first_non_finite": first}


class MetricsWriter:
    """Averages the metrics of the steps between two log steps and writes them out."""

    def __init__(self, workdir: str | Path, total_steps: int, start_step: int = 0):
        self.workdir = Path(workdir)
        self.total_steps = total_steps
        self.enabled = jax.process_index() == 0
        self._window: dict = {}  # `accumulate`'s, on the device
        self._counts: dict[str, int] = {}  # steps in the window that have each metric
        self._window_start = time.perf_counter()
        self._window_first_step = start_step
        self._tb = (
            tensorboardX.SummaryWriter(str(self.workdir / "tensorboard")) if self.enabled else None
        )
        self._jsonl = (self.workdir / "metrics.jsonl").open("a") if self.enabled else None

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (compiling, previews) does not count towards step/s."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._window_start += time.perf_counter() - start

    def add(self, metrics: dict[str, jax.Array]) -> None:
        """One step's metrics (device scalars), added to the window on the device; does not
        wait for them."""
        self._window = accumulate(self._window, metrics)
        for name in metrics:
            self._counts[name] = self._counts.get(name, 0) + 1

    def non_finite(self) -> dict[str, int]:
        """{name: the first step (steps completed) at which it was NaN or infinite} over the
        window; waits for the steps added."""
        if not self._window:
            return {}
        first = jax.device_get(self._window["first_non_finite"])
        return {k: self._window_first_step + int(i) + 1 for k, i in first.items() if i >= 0}

    def write(self, step: int) -> dict[str, float]:
        """Writes the mean of the steps added since the last write, as of `step` (steps
        completed); returns it with 'steps_per_second' and 'step_seconds'."""
        sums = jax.device_get(self._window["sums"]) if self._window else {}
        now = time.perf_counter()
        steps = step - self._window_first_step
        means = {k: float(v) / self._counts[k] for k, v in sums.items()}
        means["steps_per_second"] = steps / max(now - self._window_start, 1e-9)
        means["step_seconds"] = 1.0 / max(means["steps_per_second"], 1e-9)
        self._window, self._counts = {}, {}
        self._window_start, self._window_first_step = now, step
        if not self.enabled:
            return means
        eta = (self.total_steps - step) / means["steps_per_second"]
        losses = "  ".join(f"{k} {means[k]:.4g}" for k in CONSOLE_KEYS if k in means)
        logging.info(
            "step %d/%d  %.2f step/s  ETA %s  %s",
            step,
            self.total_steps,
            means["steps_per_second"],
            format_duration(eta),
            losses,
        )
        for key, value in means.items():
            self._tb.add_scalar(tensorboard_tag(key), value, step)
        self._jsonl.write(json.dumps({"step": step, **means}) + "\n")
        self._jsonl.flush()
        self._tb.flush()
        return means

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars outside the loss window (the held-out evaluation) at `step`: TensorBoard
        under their own tags, one metrics.jsonl line, one console line."""
        if not self.enabled:
            return
        logging.info("step %d  %s", step, "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        self._tb.flush()

    def write_images(self, step: int, rows: list[np.ndarray]) -> None:
        """One grid image of `rows` ([N, H, W, 3] each, top to bottom; Trainer.preview's)."""
        if self.enabled:
            grid = media.image_grid(rows)
            self._tb.add_image("samples", grid, step, dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
