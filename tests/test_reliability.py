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
from converters import safe_load, torch_layout
from data_pipeline.train_iter import make_train_iter
from maskrenderer_jax import cli_errors, output_files
from maskrenderer_jax.train import checkpoint, loop, run_plan, trainer
from maskrenderer_jax.train.checkpoint import Checkpoints
from maskrenderer_jax.train.metrics import MetricsWriter
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

    monkeypatch.setattr(trainer, "load_frozen", lambda config, plan, seed: {})
    monkeypatch.setattr(Trainer, "init_state", zeros_state)
    monkeypatch.setattr(Trainer, "compile", lambda self, batch: [])
    monkeypatch.setattr(Trainer, "step", fake_step)
    monkeypatch.setattr(Trainer, "preview", lambda self, state, batch: [])
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
    plan = run_plan.resolve(config, run_plan.steps_per_epoch(config))
    abstract = Trainer(config, loop.make_mesh(config.mesh), plan).abstract_state
    state, step = checkpoints.restore(abstract)
    assert step == 6 and int(state.step) == 6 and checkpoints.unrestorable == []


def test_a_zero_batch_size_names_the_flag(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--config.data.batch_size=0 \(must be a positive"):
        loop.train(tiny(data_dir, data=dict(batch_size=0)), tmp_path)


def test_demo_outputs_reads_the_runs_config(data_dir, tmp_path, no_compile, monkeypatch):
    from maskrenderer_jax.inference import demo_outputs

    config = tiny(data_dir, train=dict(num_steps=2))
    loop.train(config, tmp_path)
    seen = {}
    monkeypatch.setattr(
        demo_outputs, "write_reenactment", lambda c, v, w, **kw: seen.update(config=c) or {}
    )
    demo_outputs.main(["--workdir", str(tmp_path)])  # no --config: the run's own
    assert seen["config"].data.data_dir == str(data_dir)
    assert checkpoint.model_differences(seen["config"], config) == []
    with pytest.raises(checkpoint.IncompatibleConfigError, match="is not the model of"):
        demo_outputs.main(["--workdir", str(tmp_path), "--config", str(ROOT / "configs/tiny.py")])


# ---------------------------------------------------------------------- the loop's sync points


def test_the_loop_reads_the_device_only_at_log_and_checkpoint_steps(
    data_dir, tmp_path, no_compile, monkeypatch
):
    """Every read of a device array's value (device_get, float(), np.asarray: all go through
    ArrayImpl._value) is attributed to the step just run: only log steps (4, 8, 12) and
    checkpoint steps (1, 6, 12) read; the others dispatch and go on. The config stays as given;
    plan.json records what the run resolved."""
    config = tiny(data_dir, train=dict(num_steps=12, log_every=4),
                  checkpoint=dict(every_steps=6))  # fmt: skip
    given = json.loads(config.to_json_best_effort())
    current, reads = {"step": 0}, set()
    array_type = type(jnp.zeros(()))
    value = array_type._value

    def recorded(self):
        reads.add(current["step"])
        return value.fget(self)

    def fake_step(self, state, batch, index):
        current["step"] = index + 1
        return state.replace(step=state.step + 1), {"generator": jnp.float32(index)}

    monkeypatch.setattr(Trainer, "step", fake_step)
    monkeypatch.setattr(array_type, "_value", property(recorded))
    loop.train(config, tmp_path)
    monkeypatch.undo()
    # 0: restore and init; 1: orbax saves the first step of a run (its InitialSavePolicy).
    assert {4, 8, 12} <= reads <= {0, 1, 4, 6, 8, 12}, sorted(reads)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    means = {row["step"]: row["generator"] for row in map(json.loads, lines)}
    assert means == {4: 1.5, 8: 5.5, 12: 9.5}  # the mean of each window's steps
    assert json.loads(config.to_json_best_effort()) == given
    assert json.loads((tmp_path / "config.json").read_text()) == given
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert (plan["num_steps"], plan["triplet_start_step"]) == (12, None)  # FOMM: no triplet


def test_precise_bn_reestimates_the_statistics_once_before_the_final_checkpoint(
    data_dir, tmp_path, no_compile, monkeypatch
):
    """train.precise_bn_batches: train/precise_bn.py runs once, on the last step's state, and
    the final checkpoint holds what it returned, with the data position training left: the
    batches it read are not skipped by a run extended from that checkpoint."""
    config = tiny(data_dir, train=dict(num_steps=3, precise_bn_batches=5))
    calls = []

    def recompute(trainer, state, batches, num_batches):
        calls.append((int(state.step), num_batches))
        for _ in range(num_batches):
            next(batches)
        return state.replace(generator_stats=jax.tree.map(lambda x: x + 1, state.generator_stats))

    monkeypatch.setattr(loop.precise_bn, "recompute", recompute)
    loop.train(config, tmp_path)
    assert calls == [(3, 5)]
    trained = make_train_iter(config)
    for _ in range(3):
        next(trained)
    saved = tmp_path / "checkpoints/3/data/process_0-of-1.json"
    assert json.loads(saved.read_text()) == trained.get_state()
    stats = checkpoint.load_generator_variables(tmp_path, config)["batch_stats"]
    assert all(np.all(np.asarray(x) == 1) for x in jax.tree.leaves(stats))  # zeros + 1


def test_the_metrics_window_averages_each_term_over_the_steps_that_have_it(tmp_path):
    """A window of 4 steps after step 10 in which 'triplet' enters at the third step (its
    phase): each mean is over the steps that have the term; a non-finite value is reported
    with the step it happened at."""
    writer = MetricsWriter(tmp_path, total_steps=20, start_step=10)
    for i in range(4):
        metrics = {"generator": jnp.float32(i)}
        if i >= 2:
            metrics["triplet"] = jnp.float32(10.0 * i)
        writer.add(metrics)
    assert writer.non_finite() == {}
    means = writer.write(14)
    assert (means["generator"], means["triplet"]) == (1.5, 25.0)
    writer.add({"generator": jnp.float32(1.0), "triplet": jnp.float32(np.inf)})
    writer.add({"generator": jnp.float32(np.nan), "triplet": jnp.float32(1.0)})
    assert writer.non_finite() == {"triplet": 15, "generator": 16}
    writer.close()


def test_a_non_finite_term_between_log_steps_stops_the_run_before_the_next_save(
    data_dir, tmp_path, no_compile, monkeypatch
):
    """NaN in 'perceptual' at step 3 and inf in 'generator' at step 4, neither a log step:
    read at checkpoint step 4, which is not saved; each term named with its first step."""
    config = tiny(data_dir, train=dict(num_steps=8, log_every=8),
                  checkpoint=dict(every_steps=2))  # fmt: skip

    def fake_step(self, state, batch, index):
        metrics = {"perceptual": jnp.float32(np.nan if index == 2 else 1.0),
                   "generator": jnp.float32(np.inf if index >= 3 else 1.0)}  # fmt: skip
        return state.replace(step=state.step + 1), metrics

    monkeypatch.setattr(Trainer, "step", fake_step)
    with pytest.raises(loop.NonFiniteLossError) as info:
        loop.train(config, tmp_path)
    assert str(info.value).startswith(
        "non-finite perceptual at step 3, generator at step 4 (found at step 4); no state after "
        "it was saved, the last good one is checkpoint 2"
    )
    assert Checkpoints(tmp_path, config.checkpoint).manager.all_steps() == [1, 2]


def test_profile_steps_write_a_trace_that_tensorboard_opens(data_dir, tmp_path, no_compile, caplog):
    config = tiny(data_dir, train=dict(num_steps=4, profile_steps="2,3"))
    with caplog.at_level(logging.INFO):
        loop.train(config, tmp_path)
    # TensorBoard's profile plugin: <logdir>/<run>/plugins/profile/<session>/<host>.xplane.pb
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert f"profiled steps 2-3 into {tmp_path / 'tensorboard'}" in caplog.text


# --------------------------------------------------------------------------- outputs, errors


def run_cli(main, argv, capsys):
    """(exit code, stderr) of a command as its __main__ runs it."""
    with pytest.raises(SystemExit) as info:
        cli_errors.run(main, argv)
    return info.value.code, capsys.readouterr().err


def test_a_converter_never_overwrites_its_input(tmp_path, capsys):
    from converters import fomm

    checkpoint_file = tmp_path / "vox-cpk.pth.tar"
    checkpoint_file.write_bytes(b"the user's only copy")
    tiny_config = str(ROOT / "configs" / "tiny.py:fomm")
    for flags in ([], ["--overwrite"]):  # --overwrite never makes an input writable
        code, err = run_cli(fomm.main, ["--checkpoint", str(checkpoint_file), "--config",
                                        tiny_config, "--export", str(checkpoint_file), *flags],
                            capsys)  # fmt: skip
        assert code == 2 and f"--export {checkpoint_file} would overwrite the input" in err
    assert checkpoint_file.read_bytes() == b"the user's only copy"


def test_an_existing_output_needs_overwrite_and_is_replaced_atomically(tmp_path, capsys):
    from converters import bfm

    mat = tmp_path / "bfm.mat"
    bfm.main(["--synthetic", "--write-mat", str(mat)])
    code, err = run_cli(bfm.main, ["--mat", str(mat), "--out", str(mat)], capsys)
    assert code == 2 and "would overwrite the input" in err
    out = tmp_path / "bfm.npz"
    out.write_bytes(b"old")
    code, err = run_cli(bfm.main, ["--mat", str(mat), "--out", str(out)], capsys)
    assert (
        code == 2 and f"--out {out} exists; pass --overwrite" in err and out.read_bytes() == b"old"
    )
    bfm.main(["--mat", str(mat), "--out", str(out), "--overwrite"])
    assert np.load(out)["mean_shape"].ndim == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bfm.mat", "bfm.npz"]  # no temp left

    # A write that fails leaves the old output whole.
    with pytest.raises(RuntimeError), output_files.replacing(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert np.load(out)["mean_shape"].ndim == 2 and len(list(tmp_path.iterdir())) == 2


def test_user_mistakes_are_a_few_lines_with_exit_2_and_a_traceback_only_with_debug(
    tmp_path, capsys
):
    from converters import bfm, fomm, vgg19
    from data_pipeline import build, preprocess

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    header = "video_id,start,end,bbox,fps,width,height,partition\n"
    (tmp_path / "no_bbox.csv").write_text("video_id,start,end\nv,0,10\n")
    (tmp_path / "bad_bbox.csv").write_text(header + "v,0,10,1-2-x-4,25,640,360,train\n")
    raw = tmp_path / "raw" / "train"
    raw.mkdir(parents=True)
    cases = [
        (vgg19.main, ["--checkpoint", str(empty), "--out", str(tmp_path / "v")],
         f"{empty}: the file is empty (0 bytes)"),
        (fomm.main, ["--checkpoint", str(empty), "--config", str(ROOT / "configs/tiny.py:fomm"),
                     "--out", str(tmp_path / "f")], f"{empty}: the file is empty"),
        (bfm.main, ["--mat", str(tmp_path / "missing.mat"), "--out", str(tmp_path / "b.npz")],
         f"{tmp_path / 'missing.mat'}: no such file"),
        (preprocess.main, ["--metadata", str(tmp_path / "no_bbox.csv"), "--raw_dir", str(raw),
                           "--out_dir", str(tmp_path / "o")], "missing column(s) bbox"),
        (preprocess.main, ["--metadata", str(tmp_path / "bad_bbox.csv"), "--raw_dir", str(raw),
                           "--out_dir", str(tmp_path / "o")], "row 2, column bbox: '1-2-x-4'"),
        (build.main, ["--dataset", "voxceleb", "--manual_dir", str(tmp_path / "nope"),
                      "--data_dir", str(tmp_path / "d")], "--manual_dir"),
    ]  # fmt: skip
    for main, argv, expected in cases:
        code, err = run_cli(main, argv, capsys)
        assert code == 2 and err.startswith("error: ") and expected in err, (argv, err)
        assert len(err.splitlines()) <= 3 and "Traceback" not in err, err
    with pytest.raises(safe_load.UntrustedFileError, match="empty"):  # --debug: the exception
        cli_errors.run(vgg19.main, ["--checkpoint", str(empty), "--out", "x", "--debug"])


def test_a_command_line_reports_a_mistake_in_two_lines(tmp_path):
    """The real entry point (python -m), and MASKRENDERER_DEBUG=1 for the traceback."""
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    argv = [sys.executable, "-m", "converters.vgg19", "--checkpoint", str(empty), "--out", "x"]
    done = subprocess.run(argv, env=env(), capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: {empty}: the file is empty (0 bytes)",
        "(rerun with --debug or MASKRENDERER_DEBUG=1 for the traceback)",
    ]
    done = subprocess.run(argv, env={**env(), "MASKRENDERER_DEBUG": "1"}, capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_converters_refuse_non_finite_weights_naming_the_tensors():
    abstract = {"params": {"conv": {"kernel": np.zeros((3, 3, 1, 2)), "bias": np.zeros(2)}}}
    weight = np.ones((2, 1, 3, 3), np.float32)
    weight[0, 0, 1, 1] = np.nan
    state = {"conv.weight": weight, "conv.bias": np.array([1.0, np.inf], np.float32)}
    with pytest.raises(torch_layout.ConversionError) as info:
        torch_layout.from_torch(state, abstract, source="x.pth")
    assert "conv.bias: 1 of 2 values NaN/inf" in str(info.value)
    assert "conv.weight: 1 of 18 values NaN/inf" in str(info.value)
    variables = {"params": {"conv": {"kernel": np.full((3, 3, 1, 2), np.inf), "bias": np.ones(2)}}}
    with pytest.raises(torch_layout.ConversionError, match="conv.weight: 18 of 18"):
        torch_layout.to_torch(variables)
