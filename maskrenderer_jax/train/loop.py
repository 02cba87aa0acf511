"""The training run: data, mesh, state (fresh or resumed), the compiled steps, checkpoints,
logs. `train.py` is its command line.

A run resumes from the latest checkpoint in its workdir by itself (the newest one that
restores, see train/checkpoint.py). SIGTERM (preemption, a scheduler's stop) finishes the
current step, saves, and returns. A non-finite metric stops the run with NonFiniteLossError
naming the terms and the step, before that state is saved. A workdir belongs to one run at a
time (train/workdir_lock.py), and its config.json is written only once the resume is known to
work, so a refused config never replaces the run's own.
"""

import contextlib
import logging
import math
import signal
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data_pipeline import make_train_iter, sources
from maskrenderer_jax.cli_errors import UserError
from maskrenderer_jax.train import optim
from maskrenderer_jax.train.checkpoint import Checkpoints, check_compatible, write_run_config
from maskrenderer_jax.train.metrics import MetricsWriter
from maskrenderer_jax.train.sharding import make_mesh
from maskrenderer_jax.train.state import GANState
from maskrenderer_jax.train.trainer import Trainer
from maskrenderer_jax.train.workdir_lock import workdir_lock

AfterStep = Callable[[int, GANState, Checkpoints], None]


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient norm became NaN or infinite."""


def check_config(config: ml_collections.ConfigDict) -> None:
    """UserError naming the flag of a value the run cannot use (instead of, e.g., a
    ZeroDivisionError deep inside)."""
    bad = []
    for section, key in (("data", "batch_size"), ("data", "num_repeats"), ("train", "log_every"),
                         ("train", "image_every"), ("checkpoint", "every_steps")):  # fmt: skip
        value = config[section].get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            bad.append(f"--config.{section}.{key}={value} (must be a positive integer)")
    if config.train.num_steps < 0:
        bad.append(f"--config.train.num_steps={config.train.num_steps} (must be >= 0)")
    if bad:
        raise UserError("invalid config: " + "; ".join(bad))


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """FOMM's epoch (every training identity num_repeats times) over the global batch."""
    data = config.data
    identities = sources.open_split(data, data.train_split).index.num_identities
    return max(1, identities * data.num_repeats // data.batch_size)


class _StopRequest:
    """Remembers a SIGTERM; every process agrees on stopping at the same step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.requested = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def check_finite(metrics: dict[str, float], step: int, last_checkpoint: int | None) -> None:
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        kept = f"checkpoint {last_checkpoint}" if last_checkpoint is not None else "no checkpoint"
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} at step {step} "
            f"({', '.join(f'{k}={metrics[k]}' for k in bad)}); this state was not saved, the "
            f"last good one is {kept}"
        )


def held_out_evaluation(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> Callable[[GANState], dict[str, float]] | None:
    """state -> the TensorBoard scalars of `config.eval`'s held-out evaluation (None when
    eval.every_steps is 0). The evaluation is compiled once, at its first call."""
    if not config.get("eval") or config.eval.every_steps <= 0:
        return None
    from maskrenderer_jax.evaluation import backends, report
    from maskrenderer_jax.evaluation.protocol import Evaluator

    settings = config.eval
    evaluator = Evaluator(
        config,
        settings.protocol,
        backends.build(config, landmarks=settings.landmarks, identity=settings.identity,
                       pose=settings.pose, detector=settings.detector, lpips_net=settings.lpips,
                       protocol=settings.protocol),
        mesh=mesh,
        face_model=backends.face_model(config),
        limit=settings.limit,
    )  # fmt: skip

    def evaluate(state: GANState) -> dict[str, float]:
        variables = {"params": state.generator, "batch_stats": state.generator_stats}
        return report.tensorboard_scalars(evaluator.run(variables))

    return evaluate


def train(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    after_step: AfterStep | None = None,
) -> dict[str, float]:
    """Trains `config` in `workdir` up to config.train.num_steps; returns the last log's means.

    Args:
      config: a full training config (configs/*.py); its epoch-based schedule values are
        resolved into steps here (written to workdir/config.json).
      workdir: checkpoints/, tensorboard/, metrics.jsonl, config.json.
      after_step: called as after_step(step, state, checkpoints) after each step (and its
        checkpoint decision), e.g. for custom evaluation.
    """
    check_config(config)
    workdir = Path(workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0
    with workdir_lock(workdir) if primary else contextlib.nullcontext():
        return _train(config, workdir, after_step)


def _train(config, workdir: Path, after_step: AfterStep | None) -> dict[str, float]:
    primary = jax.process_index() == 0
    check_compatible(workdir, config)  # before anything is written or restored
    mesh = make_mesh(config.mesh)
    optim.resolve_schedule(config, steps_per_epoch(config))
    total = config.train.num_steps
    logging.info(
        "mesh %s over %d devices, %d processes; %d steps; triplet loss from step %d",
        dict(mesh.shape), mesh.size, jax.process_count(), total, config.loss.triplet_start_step,
    )  # fmt: skip

    iterator = make_train_iter(config, mesh)
    trainer = Trainer(config, mesh)
    checkpoints = Checkpoints(workdir, config.checkpoint)
    try:
        restored = checkpoints.restore(trainer.abstract_state, iterator)
    except BaseException:
        checkpoints.close()
        raise
    if restored is None:
        state, start = trainer.init_state(), 0
    else:
        state, start = restored
        logging.info("resumed from the checkpoint at step %d", start)
    if checkpoints.unrestorable:
        if primary:
            checkpoints.set_aside_unrestorable(workdir)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("unrestorable checkpoints set aside")
            checkpoints.manager.reload()
    if primary:  # only now: a refused resume must not replace the run's own config.json
        write_run_config(workdir, config)
    if start >= total:
        logging.info("already trained %d of %d steps", start, total)
        checkpoints.close()
        return {}

    stop = _StopRequest()
    writer = MetricsWriter(workdir, total, start)
    evaluate = held_out_evaluation(config, mesh)
    first, means = {}, {}
    try:
        batch = next(iterator)
        with writer.paused():
            trainer.compile(batch)
        for step in range(start, total):
            if step > start:
                batch = next(iterator)
            state, metrics = trainer.step(state, batch, step)
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            done = step + 1
            check_finite(host, done, checkpoints.latest_step())
            writer.add(host)
            stopping = stop.should_stop()
            checkpoints.save(done, state, iterator, force=stopping or done == total)
            if done % config.train.log_every == 0 or done == total or stopping:
                means = writer.write(done)
                for key, value in means.items():
                    first.setdefault(key, (done, value))
            if done % config.train.image_every == 0 or done == total:
                with writer.paused():
                    writer.write_images(done, trainer.preview(state, batch))
            if evaluate is not None and (done % config.eval.every_steps == 0 or done == total):
                with writer.paused():
                    writer.write_scalars(done, evaluate(state))
            if after_step is not None:
                after_step(done, state, checkpoints)
            if stopping:
                logging.warning("stopped at step %d on SIGTERM; resume with the same workdir", done)
                break
    finally:
        checkpoints.wait()
        checkpoints.close()
        writer.close()
        stop.restore()
    if jax.process_index() == 0:  # the first and last logged value of each loss
        for key in ("generator", "discriminator", "perceptual", "triplet"):
            if key in first and key in means:
                logging.info("%s: %.4g at step %d -> %.4g at step %d", key, first[key][1],
                             first[key][0], means[key], done)  # fmt: skip
    return means
