"""What a user relies on when things go wrong (issue #12): a workdir belongs to one run, a
refused resume leaves the run's config.json alone, a damaged latest checkpoint falls back to
the newest one that restores, no command overwrites its input or an existing output without
--overwrite, and every command reports a user's mistake in a few lines with exit code 2.

Training cases replace the compiled step with a stub (no compile), as test_train does."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from maskrenderer_jax.train import checkpoint, loop, trainer
from maskrenderer_jax.train.checkpoint import Checkpoints
from maskrenderer_jax.train.trainer import Trainer
from maskrenderer_jax.train.workdir_lock import LOCK_FILE, WorkdirBusyError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def tiny(data_dir, arg: str = "fomm", **sections) -> ml_collections.ConfigDict:
    config = common.load_config(str(ROOT / "configs" / "tiny.py") + (f":{arg}" if arg else ""))
    config.data.data_dir = str(data_dir)
    config.train.image_every = 100  # the stub step has no preview
    for name, values in sections.items():
        config[name].update(values)
    return config


@pytest.fixture
def no_compile(monkeypatch):
    """No XLA compile at all: the step is a stub, the fresh state zeros of the real shapes
    (checkpoints keep the real tree), the frozen networks absent."""

    def fake_step(self, state, batch, index):
        return state.replace(step=state.step + 1), {"generator": jnp.float32(1.0)}

    def zeros_state(self):
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), self.state_shapes)
        return jax.device_put(zeros, self.state_shardings)

    monkeypatch.setattr(trainer, "load_frozen", lambda config, seed: {})
    monkeypatch.setattr(Trainer, "init_state", zeros_state)
    monkeypatch.setattr(Trainer, "compile", lambda self, batch: [])
    monkeypatch.setattr(Trainer, "step", fake_step)
    monkeypatch.setattr(Trainer, "preview", lambda self, state, batch: {})
    monkeypatch.setattr(loop.MetricsWriter, "write_images", lambda self, step, images: None)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


# ------------------------------------------------------------------------- workdir and resume


def test_an_incompatible_resume_is_one_error_and_leaves_config_json(data_dir, tmp_path, no_compile):
    """Train FOMM-tiny, then resume the workdir with MaskRenderer-tiny: before, config.json was
    overwritten first and the failure was a 172-line orbax tree dump."""
    loop.train(tiny(data_dir, "fomm", train=dict(num_steps=2)), tmp_path)
    saved = (tmp_path / "config.json").read_text()
    with pytest.raises(checkpoint.IncompatibleConfigError) as info:
        loop.train(tiny(data_dir, ""), tmp_path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and len(message) < 1200, message
    assert "5 model settings differ" in message
    assert "model.kp_detector.attention: False in the run, True now" in message
    assert (tmp_path / "config.json").read_text() == saved


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_holder_is_taken_over(
    data_dir, tmp_path, no_compile, caplog
):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from maskrenderer_jax.train.workdir_lock import workdir_lock\n"
         f"with workdir_lock({str(tmp_path)!r}):\n"
         "    print('locked', flush=True)\n"
         "    time.sleep(120)\n"],
        env=env(), stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == b"locked"
        config = tiny(data_dir, train=dict(num_steps=2))
        with pytest.raises(WorkdirBusyError, match=f"in use by another run: pid {holder.pid} on"):
            loop.train(config, tmp_path)
        assert not (tmp_path / "config.json").exists()  # refused before writing anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without cleaning up (SIGKILL): the next run takes the lock over.
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING):
        loop.train(config, tmp_path)
    assert f"pid {holder.pid}" in caplog.text and "is gone" in caplog.text
    assert Checkpoints(tmp_path, config.checkpoint).latest_step() == 2
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released at the end


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_that_restores(
    data_dir, tmp_path, no_compile, caplog
):
    config = tiny(data_dir, train=dict(num_steps=4), checkpoint=dict(keep=3))
    loop.train(config, tmp_path)
    bad = tmp_path / "checkpoints" / "4"
    biggest = max(
        (f for f in (bad / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size
    )
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])

    config = tiny(data_dir, train=dict(num_steps=6), checkpoint=dict(keep=3))
    with caplog.at_level(logging.INFO):
        loop.train(config, tmp_path)
    assert f"checkpoint 4 ({bad.resolve()}) does not restore" in caplog.text
    assert "resuming from checkpoint 2, the newest that restores" in caplog.text
    kept = tmp_path / "unrestorable_checkpoints" / "4"
    assert kept.is_dir() and (kept / "state" / biggest.relative_to(bad / "state")).is_file()
    checkpoints = Checkpoints(tmp_path, config.checkpoint)
    assert checkpoints.manager.all_steps() == [2, 4, 6]  # 4 saved anew by the resumed run
    abstract = Trainer(config, loop.make_mesh(config.mesh)).abstract_state
    state, step = checkpoints.restore(abstract)
    assert step == 6 and int(state.step) == 6 and checkpoints.unrestorable == []


def test_a_zero_batch_size_names_the_flag(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--config.data.batch_size=0 \(must be a positive"):
        loop.train(tiny(data_dir, data=dict(batch_size=0)), tmp_path)
