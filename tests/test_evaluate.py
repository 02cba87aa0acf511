"""The evaluation protocols, the `evaluate` command and held-out evaluation in training:
baselines no metric can fake, skipped detections counted and named, errors, atomic output."""

import json
import math

import jax
import ml_collections
import numpy as np
import pytest

from configs.common import load_config
from maskrenderer_jax import evaluate as evaluate_cli
from maskrenderer_jax.evaluation import backends, report
from maskrenderer_jax.evaluation.protocol import Backends, Evaluator
from maskrenderer_jax.train.checkpoint import Checkpoints, write_run_config
from maskrenderer_jax.train.sharding import make_mesh
from maskrenderer_jax.train.state import init_state

LIMIT = 16  # frames: two eval batches of the tiny config


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """The tiny config on its own synthetic_heads set (built on first use)."""
    config = load_config("configs/tiny.py")
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    return config


@pytest.fixture(scope="module")
def run(config, tmp_path_factory):
    """A run directory as train.py leaves it: config.json and a checkpoint at step 3 (of a
    freshly initialised state: these tests check the evaluation, not training)."""
    workdir = tmp_path_factory.mktemp("run")
    checkpoints = Checkpoints(workdir, config.checkpoint)
    checkpoints.save(3, jax.jit(lambda: init_state(config, 0))(), force=True)
    checkpoints.wait()
    checkpoints.close()
    write_run_config(workdir, config)
    return workdir


def evaluator(config, protocol, baseline=None, **kwargs):
    return Evaluator(
        config,
        protocol,
        Backends(**kwargs),
        mesh=make_mesh(config.mesh),
        face_model=backends.face_model(config),
        baseline=baseline,
        limit=LIMIT,
    )


def stand_in_landmarks(images):
    """A landmark backend for the runner's bookkeeping: fixed points moved by the image's
    mean, and 'no face' (NaN) in frames darker than the batch's median."""
    images = np.asarray(images)
    brightness = images.mean(axis=(1, 2, 3))
    points = np.linspace(10, 50, 136, dtype=np.float32).reshape(1, 68, 2)
    points = points + brightness[:, None, None]
    points[brightness < np.median(brightness)] = np.nan
    return points


def test_copy_driving_is_perfect_and_copy_source_is_not(config):
    lpips = backends.build(config, landmarks="none", identity="none").lpips
    fake_landmarks = stand_in_landmarks
    result = evaluator(config, "self", "copy_driving", lpips=lpips, landmarks=fake_landmarks).run(
        None
    )
    m = result["metrics"]
    assert result["frames"] == LIMIT
    assert m["l1"] == 0 and m["ssim"] == 1 and m["lpips"] == 0 and m["akd"] == 0
    assert math.isinf(m["psnr"]) and math.isinf(m["masked_psnr"])
    assert m["masked_ssim"] == pytest.approx(1.0, abs=1e-6)
    baseline = evaluator(config, "self", "copy_source", lpips=lpips).run(None)["metrics"]
    assert baseline["l1"] > 0.005 and baseline["lpips"] > 0.01 and baseline["ssim"] < 0.99
    assert math.isfinite(baseline["psnr"]) and baseline["masked_psnr"] < baseline["psnr"]


def test_frames_without_a_face_are_skipped_counted_and_named(config):
    result = evaluator(config, "self", "copy_source", landmarks=stand_in_landmarks).run(None)
    skipped = result["skipped"].get("akd", 0)
    assert 0 < skipped < LIMIT  # the test's stand-in finds no face in the dark frames
    assert len(result["skipped_frames"]["akd"]) == skipped
    assert all("#" in name and ":" in name for name in result["skipped_frames"]["akd"])
    assert math.isfinite(result["metrics"]["akd"])


def test_cross_protocol_scores_identity_and_keypoints(config):
    identity = lambda images: np.asarray(images).reshape(len(images), -1)[:, :512]
    result = evaluator(config, "cross", "copy_driving", identity=identity,
                       landmarks=stand_in_landmarks).run(None)  # fmt: skip
    m = result["metrics"]
    # The output IS the driving frame: its keypoints match exactly; its identity is another's.
    assert m["ksim"] == pytest.approx(1.0, abs=1e-6)
    assert m["isim"] < 0.999


def test_cli_evaluates_a_run(run, config, capsys):
    result = evaluate_cli.main(
        ["--workdir", str(run), "--protocol", "self", "--limit", str(LIMIT),
         "--landmarks", "none", "--identity", "none"]
    )  # fmt: skip
    out = run / "eval" / "self-step3.json"
    saved = json.loads(out.read_text())
    assert saved["step"] == 3 and saved["frames"] == LIMIT
    assert set(saved["metrics"]) >= {"l1", "psnr", "ssim", "lpips", "masked_psnr", "masked_ssim"}
    assert saved["metrics"] == pytest.approx(result["metrics"])
    assert 0.05e9 < saved["metrics"]["macs"] < 0.2e9  # the tiny model's per-frame program
    assert "epd, prmse" in " ".join(saved["backends"]["left_out"])
    table = out.with_suffix(".md").read_text()
    assert table.splitlines()[0].startswith("|  | frames | L1 ↓ | SSIM ↑ | PSNR ↑")
    assert (run / "tensorboard").is_dir()
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_are_one_line(run, tmp_path, capsys):
    for argv, expected in (
        (["--workdir", str(tmp_path / "nope")], "no such run directory"),
        (["--workdir", str(run), "--step", "7"], "no checkpoint at step 7; saved steps [3]"),
        (["--fomm-checkpoint", str(tmp_path / "x.pth")], "no such file"),
        (["--fomm-checkpoint", str(run / "config.json")], "pass --config"),
        (["--workdir", str(run), "--out", str(tmp_path / "a" / "b.json")], "does not exist"),
        (["--workdir", str(run), "--out", str(run / "config.json")], "pass --overwrite"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_cli.main([*argv, "--landmarks", "none", "--identity", "none"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1


def test_an_interrupted_evaluation_leaves_no_result(run, monkeypatch, tmp_path):
    def killed(self, variables):
        raise KeyboardInterrupt

    monkeypatch.setattr(Evaluator, "run", killed)
    out = tmp_path / "result.json"
    with pytest.raises(KeyboardInterrupt):
        evaluate_cli.main(["--workdir", str(run), "--out", str(out), "--landmarks", "none",
                           "--identity", "none"])  # fmt: skip
    assert not out.exists() and not list(tmp_path.iterdir())


def test_report_states_infinite_psnr(tmp_path):
    result = {"protocol": "self", "frames": 2, "metrics": {"l1": 0.0, "psnr": math.inf}}
    assert "∞" in report.markdown_table([("copy_driving", result)], "self")
    path = report.write_json(tmp_path / "r.json", result)
    assert json.loads(path.read_text())["metrics"]["psnr"] == math.inf
    assert report.tensorboard_scalars(result) == {"eval_self/l1": 0.0}


def test_head_pose_fit_recovers_the_synthetic_pose(config):
    from data_pipeline import synthetic_heads
    from maskrenderer_jax.evaluation import head_pose, metrics
    from maskrenderer_jax.face3d import render

    model = backends.face_model(config, always=True)
    rng = lambda *k: np.random.default_rng([0, *k])
    identity = synthetic_heads.identity_coefficients
    coeffs = np.concatenate(
        [synthetic_heads.clip_coefficients(identity(rng(i)), rng(i, 1), 6) for i in range(3)]
    )
    points = np.asarray(render.render(model, coeffs, 64)["landmarks"]) - 0.5
    points[2] = np.nan  # no face in frame 2
    fitted = np.asarray(head_pose.fit_head_pose(model, points, 64))
    assert np.isnan(fitted[2]).all() and np.isfinite(np.delete(fitted, 2, axis=0)).all()
    error, skipped = metrics.aggregate("prmse", metrics.prmse(fitted, coeffs))
    spread = np.rad2deg(coeffs[:, 224:227]).std()
    assert skipped == 1 and error < 2.0 < spread  # degrees; the poses vary by more than that


def test_readme_evaluating_example_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Evaluating", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(code, namespace)
    assert namespace["ssim"].shape == namespace["psnr"].shape == namespace["lpips"].shape == (2,)
    assert 0 < float(namespace["lpips"][0]) < 1 and 0.5 < float(namespace["ssim"][0]) < 1


def test_fid_of_the_source_itself_is_zero(config):
    from maskrenderer_jax.nets import inception

    variables = inception.init_random(jax.random.key(0))
    same = evaluator(config, "cross", "copy_source", inception=variables).run(None)
    other = evaluator(config, "cross", "copy_driving", inception=variables).run(None)
    # Random weights give small features (and distances); the ratio is what is checked.
    assert same["metrics"]["fid"] == 0.0 < other["metrics"]["fid"]


def test_training_logs_the_held_out_evaluation(config, tmp_path, monkeypatch):
    """config.eval.every_steps: the evaluation of the run's generator every N steps and at
    the end, in metrics.jsonl and TensorBoard (the training step itself is stubbed)."""
    from maskrenderer_jax.train import loop
    from maskrenderer_jax.train.trainer import Trainer

    config = ml_collections.ConfigDict(config.to_dict())
    config.train.update(num_steps=3, image_every=100)
    config.eval.update(every_steps=2, limit=8)
    monkeypatch.setattr(Trainer, "compile", lambda self, batch: [])
    monkeypatch.setattr(Trainer, "step", lambda self, state, batch, index: (
        state.replace(step=state.step + 1), {"generator": jax.numpy.float32(1.0)}))  # fmt: skip
    loop.train(config, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluated = [x for x in lines if "eval_self/l1" in x]
    assert [x["step"] for x in evaluated] == [2, 3]
    assert {"eval_self/lpips", "eval_self/ssim", "eval_self/masked_psnr"} <= set(evaluated[0])
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").iterdir())
    assert b"eval_self/l1" in events


def test_macs_per_frame_of_fomm_vox256_is_fomms():
    """FOMM's generator at 256² with the source keypoints cached: ~55 GMACs per frame (the
    figure the one-shot reenactment literature quotes for it)."""
    from maskrenderer_jax.evaluation.protocol import model_macs_per_frame

    macs = model_macs_per_frame(load_config("configs/fomm_vox256.py"))
    assert macs == pytest.approx(55e9, rel=0.05)


def test_cli_evaluates_a_fomm_checkpoint(config, tmp_path, capsys):
    import torch

    from tests import torch_utils

    fomm_config = load_config("configs/tiny.py:fomm")
    checkpoint = tmp_path / "fomm.pth.tar"
    torch.save(torch_utils.checkpoint_of(torch_utils.random_fomm(fomm_config.model, seed=5)),
               checkpoint)  # fmt: skip
    out = tmp_path / "fomm.json"
    result = evaluate_cli.main(
        ["--fomm-checkpoint", str(checkpoint), "--config", "configs/tiny.py:fomm",
         "--data-dir", config.data.data_dir, "--limit", "8", "--landmarks", "none",
         "--identity", "none", "--out", str(out)]
    )  # fmt: skip
    assert result["model"] == f"FOMM checkpoint {checkpoint}" and result["frames"] == 8
    assert json.loads(out.read_text())["metrics"]["l1"] == pytest.approx(result["metrics"]["l1"])
    assert 0 < result["metrics"]["l1"] < 1 and result["metrics"]["macs"] > 0
    # The same model on a data set that was never built: one line saying how to build it.
    vox = tmp_path / "vox.py"
    vox.write_text(
        "from configs import tiny\n\n\ndef get_config(arg=None):\n"
        "    config = tiny.get_config('fomm')\n    config.data.dataset = 'voxceleb'\n"
        "    return config\n"
    )
    with pytest.raises(SystemExit):
        evaluate_cli.main(["--fomm-checkpoint", str(checkpoint), "--config", str(vox),
                           "--data-dir", str(tmp_path / "none"), "--landmarks", "none",
                           "--identity", "none", "--out", str(tmp_path / "v.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert "no data set at" in err and "data_pipeline.build" in err and len(err.splitlines()) == 1
