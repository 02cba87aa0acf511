"""The training run: data, mesh, state (fresh or resumed), the compiled steps, checkpoints,
logs. `train.py` is its command line.

A run resumes from the latest checkpoint in its workdir by itself (the newest one that
restores, see train/checkpoint.py). What it does is its RunPlan (train/run_plan.py), resolved
once from the config and the data set and written beside the config (plan.json). A workdir
belongs to one run at a time (train/workdir_lock.py), and its config.json is written only once
the resume is known to work, so a refused config never replaces the run's own.

The host waits for the device only at log steps (train.log_every, the metrics' means come to
the host), checkpoint steps, the last step, and the steps that write images, evaluate or are
profiled: between those it dispatches steps ahead of the device. The metrics are summed on the
device with a non-finite flag per term (train/metrics.py); at every log and checkpoint step the
flags are read, and a NaN or infinite term stops the run with NonFiniteLossError naming the
term and the first step it was non-finite, before any later state is saved. SIGTERM
(preemption, a scheduler's stop) saves and returns: one process after the current step,
several at the next log or checkpoint step (`_StopRequest`). With train.precise_bn_batches,
the generator side's BatchNorm statistics are re-estimated after the last step
(train/precise_bn.py), before the final checkpoint, preview and held-out evaluation.
"""

import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data_pipeline import make_train_iter
from maskrenderer_jax.cli_errors import UserError
from maskrenderer_jax.train import precise_bn, run_plan
from maskrenderer_jax.train.checkpoint import (
    Checkpoints,
    check_compatible,
    write_run_config,
    write_run_plan,
)
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
    if bad:
        raise UserError("invalid config: " + "; ".join(bad))


class _StopRequest:
    """Remembers a SIGTERM; every process agrees on stopping at the same step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM: saving a checkpoint at the next step that may stop, then "
                        "stopping")  # fmt: skip
        self.requested = True

    def should_stop(self, sync_point: bool) -> bool:
        """Whether to stop after this step. One process: as soon as SIGTERM has come. Several
        processes must stop at the same step, so they agree (an allgather, which waits for
        every process) only at `sync_point`s, the log and checkpoint steps, where the loop
        waits for the device anyway: a SIGTERM then stops the job at the next log or
        checkpoint step, up to min(train.log_every, checkpoint.every_steps) steps later."""
        if jax.process_count() == 1:
            return self.requested
        if not sync_point:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def check_finite(first_non_finite: dict[str, int], step: int, last_checkpoint: int | None):
    """NonFiniteLossError naming each term of `first_non_finite` ({term: the first step it was
    NaN or infinite}, `MetricsWriter.non_finite`), found at `step`."""
    if first_non_finite:
        kept = f"checkpoint {last_checkpoint}" if last_checkpoint is not None else "no checkpoint"
        terms = sorted(first_non_finite.items(), key=lambda item: (item[1], item[0]))
        raise NonFiniteLossError(
            f"non-finite {', '.join(f'{k} at step {s}' for k, s in terms)} (found at step "
            f"{step}); no state after it was saved, the last good one is {kept}"
        )


class _ProfileTrace:
    """A jax.profiler trace of the plan's `profile_steps` (first, last), into
    workdir/tensorboard, where TensorBoard's profile plugin finds it
    (tensorboard/plugins/profile/<date>/<host>.xplane.pb). A resumed run traces the part of
    the range it runs."""

    def __init__(self, steps: tuple[int, int] | None, start: int, log_dir: Path):
        self.first, self.last = steps if steps is not None else (0, -1)
        self.first = max(self.first, start + 1)
        self.log_dir = log_dir
        self.active = False

    def before(self, step: int) -> None:
        """Before the step that completes step `step`."""
        if step == self.first and step <= self.last:
            jax.profiler.start_trace(str(self.log_dir))
            self.active = True

    def after(self, step: int, state: GANState) -> None:
        """After the step that completed step `step`: the trace ends once it has run."""
        if self.active and step == self.last:
            jax.block_until_ready(state)
            self.stop()
            logging.info("profiled steps %d-%d into %s", self.first, self.last, self.log_dir)

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


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
    """Trains `config` in `workdir` up to its plan's num_steps; returns the last log's means.

    Args:
      config: a full training config (configs/*.py), not modified; its run plan (the
        epoch-based schedule values in steps, and so on) is resolved here and written to
        workdir/plan.json beside workdir/config.json.
      workdir: checkpoints/, tensorboard/, metrics.jsonl, config.json, plan.json.
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
    plan = run_plan.resolve(config, run_plan.steps_per_epoch(config))
    total = plan.num_steps
    logging.info(
        "mesh %s over %d devices, %d processes; %d steps; %s",
        dict(mesh.shape), mesh.size, jax.process_count(), total,
        f"triplet loss from step {plan.triplet_start_step}" if plan.uses_triplet
        else "no triplet loss",
    )  # fmt: skip

    iterator = make_train_iter(config, mesh)
    trainer = Trainer(config, mesh, plan)
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
        write_run_plan(workdir, plan)
    if start >= total:
        logging.info("already trained %d of %d steps", start, total)
        checkpoints.close()
        return {}

    stop = _StopRequest()
    writer = MetricsWriter(workdir, total, start)
    profile = _ProfileTrace(plan.profile_steps, start, workdir / "tensorboard")
    evaluate = held_out_evaluation(config, mesh)
    first, means = {}, {}
    try:
        batch = next(iterator)
        with writer.paused():
            trainer.compile(batch)
        for step in range(start, total):
            if step > start:
                batch = next(iterator)
            done = step + 1
            profile.before(done)
            state, metrics = trainer.step(state, batch, step)
            writer.add(metrics)  # stays on the device: nothing here waits for the step
            profile.after(done, state)
            if done == total and config.train.precise_bn_batches:
                with writer.paused():  # before the last checkpoint and evaluation
                    # The iterator is put back where training left it, so the checkpoint's
                    # data position is training's own: a run extended later (a larger
                    # num_steps) reads the batches one longer run would have read.
                    position = iterator.get_state()
                    state = precise_bn.recompute(
                        trainer, state, iterator, config.train.precise_bn_batches
                    )
                    iterator.set_state(position)
            log = done % config.train.log_every == 0 or done == total
            save = done == total or checkpoints.due(done)
            stopping = stop.should_stop(sync_point=log or save)
            if log or save or stopping:  # a sync point: waits for the steps dispatched so far
                check_finite(writer.non_finite(), done, checkpoints.latest_step())
            if save or stopping:
                checkpoints.save(done, state, iterator, force=True)
            if log or stopping:
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
        profile.stop()  # a run that ended inside the range
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
