"""What a run reports: console lines (step, step/s, ETA, losses), TensorBoard event files
(every loss term, gradient norms, learning rate, step time, image grids) and metrics.jsonl in
the workdir. Only process 0 writes; every process may call."""

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import jax
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


class MetricsWriter:
    """Averages the metrics of the steps between two log steps and writes them out."""

    def __init__(self, workdir: str | Path, total_steps: int, start_step: int = 0):
        self.workdir = Path(workdir)
        self.total_steps = total_steps
        self.enabled = jax.process_index() == 0
        self._window: list[dict] = []
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

    def add(self, metrics: dict[str, float]) -> None:
        """The host-side scalars of one step."""
        self._window.append(metrics)

    def write(self, step: int) -> dict[str, float]:
        """Writes the mean of the steps added since the last write, as of `step` (steps
        completed); returns it with 'steps_per_second' and 'step_seconds'."""
        now = time.perf_counter()
        steps = step - self._window_first_step
        means = {
            k: float(np.mean([m[k] for m in self._window if k in m])) for k in self._window[-1]
        }
        means["steps_per_second"] = steps / max(now - self._window_start, 1e-9)
        means["step_seconds"] = 1.0 / max(means["steps_per_second"], 1e-9)
        self._window, self._window_start, self._window_first_step = [], now, step
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

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if self.enabled:
            # A row per name in the dict's order: source, driving, prediction, occlusion
            # masks, rendered face.
            grid = media.image_grid(list(images.values()))
            self._tb.add_image("samples", grid, step, dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
