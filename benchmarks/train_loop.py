"""The training loop's cost per step beside the bare compiled step it runs.

python -m benchmarks.train_loop [--steps 30] [--batch 4] [--rounds 2] [--write]

FOMM at the tiny size (configs/tiny.py:fomm) on the synthetic_heads set. Bare: the compiled
`Trainer.step` over `--steps` batches taken from the training iterator beforehand, blocked once
at the end. Loop: `loop.train` over the same batches (a fresh run: the iterator starts where
the bare run's did) with one log step at the end, as a run between two log steps sees it: the
data iterator, the device-side metrics window, the checkpoint decisions, the first step's and
the last step's checkpoint saves (orbax saves a fresh run's first step), the log. Its time per
step is the loop's own step/s (compile and the image preview are excluded, as in the logs).
Rounds alternate bare and loop so machine noise hits both alike; medians.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax

from benchmarks import report
from configs import common
from data_pipeline import make_train_iter
from maskrenderer_jax.train import loop, run_plan, sharding
from maskrenderer_jax.train.trainer import Trainer

SECTION = "## Training loop overhead"
ROOT = Path(__file__).resolve().parents[1]


def bench_config(steps: int, batch: int, data_dir: str | None):
    config = common.load_config(str(ROOT / "configs" / "tiny.py") + ":fomm")
    with config.unlocked():
        config.data.batch_size = batch
        if data_dir:
            config.data.data_dir = data_dir
        # One log step, at the end; no checkpoint steps but the ones orbax and the end force.
        config.train.update(num_steps=steps, log_every=steps, image_every=steps)
        config.checkpoint.update(every_steps=10 * steps)
    return config


def bare_seconds(config) -> float:
    """Seconds per step of the compiled step alone over the run's first batches."""
    plan = run_plan.resolve(config, run_plan.steps_per_epoch(config))
    iterator = make_train_iter(config)
    batches = [next(iterator) for _ in range(plan.num_steps)]
    trainer = Trainer(config, sharding.make_mesh(config.mesh), plan)
    trainer.compile(batches[0])
    state = trainer.init_state()
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        state, metrics = trainer.step(state, batch, step)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / plan.num_steps


def loop_seconds(config) -> float:
    """Seconds per step of `loop.train` (its own step/s: compile and preview excluded)."""
    with tempfile.TemporaryDirectory() as workdir:
        return loop.train(config, workdir)["step_seconds"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_loop", description=__doc__)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed run")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="bare/loop pairs, alternated")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: the config's)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    run_facts = report.facts()
    config = bench_config(args.steps, args.batch, args.data_dir)
    times = {"bare": [], "loop": []}
    for i in range(args.rounds):
        for name in ("bare", "loop") if i % 2 == 0 else ("loop", "bare"):
            seconds = bare_seconds(config) if name == "bare" else loop_seconds(config)
            times[name].append(seconds)
            print(f"round {i + 1}: {name} {seconds * 1e3:.1f} ms/step", flush=True)
    bare, looped = (statistics.median(times[k]) for k in ("bare", "loop"))
    table = "\n".join([
        "| config | batch | steps | bare step ms/step | loop ms/step | overhead ms/step "
        "| loop / bare |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| FOMM tiny 64² | {args.batch} | {args.steps} | {bare * 1e3:.1f} | {looped * 1e3:.1f} "
        f"| {(looped - bare) * 1e3:+.1f} | {looped / bare:.3f} |",
    ])  # fmt: skip
    intro = (
        "What `maskrenderer_jax.train.loop` adds to each step beyond the compiled step: "
        f"FOMM tiny (`configs/tiny.py:fomm`, batch {args.batch}), {args.steps} steps per run, "
        f"{args.rounds} run(s) of each, alternated, medians. Bare: `Trainer.step` over batches "
        "taken from the training iterator beforehand, blocked once at the end. Loop: "
        "`loop.train` over the same batches with one log step at the end (its own step/s, "
        "compile excluded): it reads the next batch from the iterator, adds the metrics to the "
        "device-side window, decides on checkpoints and SIGTERM without waiting for the "
        "device, and waits for it only at the log and the checkpoint steps (a fresh run's "
        "first step, which orbax saves, and the last). Overhead therefore includes the data "
        "pipeline's time (on this CPU it shares the cores with the step) and two checkpoint "
        "saves."
    )
    run_facts.append(
        f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; per run "
        f"(ms/step): bare {' '.join(f'{t * 1e3:.1f}' for t in times['bare'])}, loop "
        f"{' '.join(f'{t * 1e3:.1f}' for t in times['loop'])}"
    )
    report.publish(SECTION, intro, table, run_facts, args.write)


if __name__ == "__main__":
    main()
