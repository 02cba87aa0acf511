"""Training learns: a few dozen steps of the tiny config lower the held-out
self-reenactment L1 (evaluation.protocol on the data set's test identities) below its value
at initialisation. A step whose gradient does not reach the generator (a misplaced
stop_gradient, a loss that does not depend on the prediction, a broken optimiser update)
leaves it where it was."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from configs import common
from data_pipeline import make_train_iter
from maskrenderer_jax.evaluation.protocol import Backends, Evaluator
from maskrenderer_jax.train import run_plan, sharding
from maskrenderer_jax.train.frozen import morphable_model
from maskrenderer_jax.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30
EVAL_FRAMES = 16


def held_out_l1(evaluator: Evaluator, state) -> float:
    variables = {"params": state.generator, "batch_stats": state.generator_stats}
    return evaluator.run(variables)["metrics"]["l1"]


def test_a_few_dozen_steps_lower_the_held_out_l1(tmp_path_factory):
    # FOMM's graph at tiny's sizes (no discriminator, no 3D branch: the compile dominates
    # this test), two pyramid scales, on a small synthetic_heads set (built in seconds).
    config = common.load_config(str(ROOT / "configs" / "tiny.py:fomm"))
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.data.synthetic.update(
        train_identities=3, test_identities=2, clips_per_identity=2, frames_per_clip=8
    )
    config.data.batch_size = 4
    config.loss.pyramid_scales = (1.0, 0.5)
    config.optim.learning_rate = 2e-3  # moves a fresh generator within a few dozen steps
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    trainer = Trainer(config, mesh, run_plan.resolve(config, run_plan.steps_per_epoch(config)))
    evaluator = Evaluator(
        config, "self", Backends(), mesh=mesh, face_model=morphable_model(config),
        limit=EVAL_FRAMES,
    )  # fmt: skip
    iterator = make_train_iter(config)
    batch = next(iterator)
    trainer.compile(batch)
    state = trainer.init_state()
    before = held_out_l1(evaluator, state)
    losses = []
    for step in range(STEPS):
        state, metrics = trainer.step(state, batch if step == 0 else next(iterator), step)
        losses.append(float(metrics["perceptual"]))
    after = held_out_l1(evaluator, state)
    assert after < 0.8 * before, f"held-out L1 {before:.4f} at init, {after:.4f} after {STEPS}"
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.slow  # ~100 s of CPU: compile, 2 steps, dlib's CNN on 2 frames x 4 evaluations
def test_the_ablation_benchmark_trains_evaluates_and_tabulates(tmp_path):
    # benchmarks.learning's command line at the smallest budget: one row, one seed, 2 steps,
    # 2 frames per protocol (the shared synthetic_heads build); the numbers mean nothing. In a
    # process of its own: one CPU device, as a user runs it (the tests' 8 virtual devices do
    # not split the batch of 4).
    png = tmp_path / "curves.png"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.learning", "--rows", "fomm", "--seeds", "0",
         "--steps", "2", "--limit", "2", "--runs", str(tmp_path / "runs"), "--png", str(png)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| FOMM")]
    assert len(rows) == 1 and "—" not in rows[0].split("|")[3], done.stdout  # self L1
    assert "| copy-source |" in done.stdout
    assert png.stat().st_size > 0
    run = tmp_path / "runs" / "fomm-2steps-seed0"
    assert (run / "eval" / "benchmark-self-limit2-max_frames0.json").exists()
