"""Training: schedules, shardings, the 3D branch under flips, the two step variants, the run
loop's failure handling, and the equivalences a scaled or interrupted run must keep:
8 sharded devices == 1 device, FSDP == replicated, 2 processes == 1 process, and a run killed
with SIGKILL and resumed == an uninterrupted run."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import common
from data_pipeline import make_train_iter
from maskrenderer_jax.cli_errors import UserError
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import synthetic_bfm
from maskrenderer_jax.face3d.branch import branch_inputs
from maskrenderer_jax.models.layers import coordinate_grid
from maskrenderer_jax.train import loop, optim, run_plan, sharding, step
from maskrenderer_jax.train.checkpoint import Checkpoints, load_generator_variables
from maskrenderer_jax.train.plan import AbstractStep, abstract_batch
from maskrenderer_jax.train.trainer import CPU_COMPILER_OPTIONS, Trainer
from tests.jaxpr_utils import jit_calls

ROOT = Path(__file__).resolve().parents[1]
RUNS = str(ROOT / "tests" / "train_runs.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data dir where the synthetic_heads set gets built (on first use, once per module)."""
    return tmp_path_factory.mktemp("tfds")


def tiny(data_dir, arg: str = "", **sections) -> ml_collections.ConfigDict:
    config = common.load_config(str(ROOT / "configs" / "tiny.py") + (f":{arg}" if arg else ""))
    config.data.data_dir = str(data_dir)
    for name, values in sections.items():
        config[name].update(values)
    return config


def subprocess_env(cache_dir: Path, devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)  # later runs reuse the compiled steps
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_training(
    workdir, steps, *, data_dir, cache_dir, config="configs/tiny.py:fomm", extra=(), check=True
) -> subprocess.CompletedProcess:
    """tests/train_runs.py in a subprocess with 8 CPU devices."""
    cmd = [sys.executable, RUNS, "--config", str(ROOT / config), "--workdir", str(workdir),
           "--steps", str(steps), "--set", f"data.data_dir={str(data_dir)!r}", *extra]  # fmt: skip
    out = subprocess.run(cmd, env=subprocess_env(cache_dir, 8), capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    if check and out.returncode:
        raise AssertionError(f"training run failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out


def metrics_lines(workdir) -> dict[int, dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines)}


LOSS_KEYS = ("generator", "perceptual", "equivariance_value", "equivariance_jacobian")


# --- schedules, shardings --------------------------------------------------------------------


def load(name: str) -> ml_collections.ConfigDict:
    return common.load_config(str(ROOT / "configs" / name))


def test_epoch_schedule_resolves_into_steps():
    config = load("maskrenderer_vox256.py")
    plan = run_plan.resolve(config, steps_per_epoch=50)
    assert (plan.num_steps, plan.milestones, plan.triplet_start_step) == (
        100 * 50,
        (60 * 50, 90 * 50),
        10 * 50,
    )
    assert (plan.uses_3d, plan.uses_discriminator, plan.uses_regressor) == (True, True, False)
    assert plan.triplet_phases() == (False, True)
    assert not plan.triplet_phase(10 * 50 - 1) and plan.triplet_phase(10 * 50)
    schedule = optim.learning_rate(config.optim, plan.milestones)
    assert float(schedule(60 * 50 - 1)) == pytest.approx(2e-4)
    assert float(schedule(60 * 50)) == pytest.approx(2e-5)
    assert float(schedule(90 * 50)) == pytest.approx(2e-6)
    # Step values set explicitly win over epochs.
    plan = run_plan.resolve(load("tiny.py"), steps_per_epoch=50)
    assert (plan.num_steps, plan.milestones, plan.triplet_start_step) == (4, (3000, 4500), 2)
    short = load("tiny.py")
    short.train.num_steps = 2  # ends before the triplet phase would start
    plan = run_plan.resolve(short, steps_per_epoch=50)
    assert plan.triplet_start_step is None and plan.triplet_phases() == (False,)
    plan = run_plan.resolve(load("demo.py"), steps_per_epoch=50)
    assert (plan.num_steps, plan.milestones) == (1400, (840,))
    # demo: alpha 0, so no triplet phase however triplet_start_step reads.
    assert plan.triplet_start_step is None and plan.triplet_phases() == (False,)
    # FOMM's vox-256: no triplet loss, no discriminator (generator_gan 0), no 3D branch.
    plan = run_plan.resolve(load("fomm_vox256.py"), steps_per_epoch=50)
    assert (plan.num_steps, plan.triplet_start_step, plan.uses_discriminator, plan.uses_3d) == (
        100 * 50,
        None,
        False,
        False,
    )


def test_the_run_plan_leaves_the_config_as_loaded_and_is_immutable():
    """Resolving reads the config, never writes it (before, the loop rewrote num_steps,
    milestones and triplet_start_step in place, and a Trainer built from the config as loaded
    silently trained without the triplet phase)."""
    for name in ("maskrenderer_vox256.py", "tiny.py", "demo.py", "fomm_vox256.py"):
        config = load(name)
        before = config.to_json_best_effort()
        plan = run_plan.resolve(config, steps_per_epoch=7)
        assert config.to_json_best_effort() == before, name
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.num_steps = 1
    # The vox configs' -1 (derive from epochs) is valid; what cannot run is named, all at once.
    config = load("tiny.py")
    with config.unlocked():
        config.train.update(num_steps=-2, profile_steps="3")
        config.face3d.coefficients = "online"
    with pytest.raises(UserError) as info:
        run_plan.resolve(config, steps_per_epoch=7)
    for flag in ("--config.train.num_steps=-2", "--config.train.profile_steps='3'",
                 "--config.face3d.coefficients='online'"):  # fmt: skip
        assert flag in str(info.value)
    config.train.update(num_steps=4, profile_steps="2,3")
    config.face3d.coefficients = "regressor"
    plan = run_plan.resolve(config, steps_per_epoch=7)
    assert plan.profile_steps == (2, 3) and plan.uses_regressor


def test_fsdp_rules_shard_the_largest_divisible_dimension():
    rules = ml_collections.ConfigDict(
        dict(rules=(("discriminator", "replicated"), (".*", "fsdp")), fsdp_min_size=100)
    )
    spec = sharding.leaf_spec
    assert spec("generator/conv/kernel", (3, 3, 64, 128), rules, 4) == P(None, None, None, "fsdp")
    assert spec("generator/conv/kernel", (3, 3, 8, 30), rules, 4) == P(None, None, "fsdp", None)
    assert spec("generator/conv/kernel", (3, 3, 5, 7), rules, 4) == P()  # nothing divides
    assert spec("generator/conv/bias", (64,), rules, 4) == P()  # below fsdp_min_size
    assert spec("discriminator/conv/kernel", (3, 3, 64, 128), rules, 4) == P()
    assert spec("generator/conv/kernel", (3, 3, 64, 128), rules, 1) == P()


def test_mesh_must_cover_the_devices():
    assert sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=2))).shape == {
        "data": 4,
        "fsdp": 2,
    }
    with pytest.raises(ValueError, match="does not cover the 8 devices"):
        sharding.make_mesh(ml_collections.ConfigDict(dict(data=3, fsdp=2)))


# --- the step ----------------------------------------------------------------------------------


def test_flipped_frames_get_the_flipped_3d_inputs():
    """Coefficients of flipped frames come mirrored, with id/exp/tex that cannot mirror: the
    branch renders from the unmirrored set and flips, so it equals flipping the unflipped
    frames' inputs exactly, for a flipped pair and for a flipped cross driver."""
    model = synthetic_bfm.synthetic_bfm(0)
    rng = np.random.default_rng(0)
    coeffs = np.zeros((2, 2, mm.NUM_COEFFS), np.float32)
    coeffs[..., :80] = rng.normal(0, 0.8, (2, 2, 80))
    coeffs[..., 80:144] = rng.normal(0, 0.5, (2, 2, 64))
    coeffs[..., 224:227] = rng.normal(0, 0.2, (2, 2, 3))
    source, driving = jnp.asarray(coeffs[0]), jnp.asarray(coeffs[1])
    fn = jax.jit(branch_inputs, static_argnums=3)
    plain = fn(model, source, driving, 32)
    mirror = mm.mirror_coefficients
    yes, no = jnp.ones(2, bool), jnp.zeros(2, bool)
    both = fn(model, mirror(source), mirror(driving), 32, source_flipped=yes, driving_flipped=yes)
    only_driver = fn(model, source, mirror(driving), 32, source_flipped=no, driving_flipped=yes)
    flip = lambda x: x[:, :, ::-1]  # noqa: E731
    for name in ("coverage_3d", "rendered_3d"):
        np.testing.assert_allclose(both[name], flip(plain[name]), atol=1e-5)
        np.testing.assert_allclose(only_driver[name], flip(plain[name]), atol=1e-5)
    # Motion on the face: driving pixels flip; the source position's x flips with the source.
    # Off the face it is the identity grid in every case.
    face = np.repeat(flip(plain["coverage_3d"])[..., None] > 0, 2, axis=-1)
    motion = flip(plain["motion_3d"])
    identity = np.broadcast_to(coordinate_grid(32, 32), motion.shape)
    for out, expected in ((both, motion * np.array([-1.0, 1.0])), (only_driver, motion)):
        np.testing.assert_allclose(out["motion_3d"], np.where(face, expected, identity), atol=1e-5)
    assert float(plain["coverage_3d"].mean()) > 0.1  # a face was rendered


def abstract_step_inputs(config):
    """The step's inputs as shapes (a batch of 2), as the pod planner builds them."""
    abstract = AbstractStep(config)
    return abstract.state, abstract_batch(config, 2), abstract.frozen, abstract.plan


def test_the_phase_before_the_triplet_start_has_no_cross_pass(data_dir):
    """The variant before `triplet_start_step` traces no cross-identity generator pass and no
    VGGFace2 (it runs without the net); the variant after it needs both. Each reenacted face
    is rasterized once, for its render and M_3D alike, and no source face at all."""
    config = tiny(data_dir)
    state, batch, frozen, plan = abstract_step_inputs(config)
    without = {k: v for k, v in frozen.items() if k != "vggface2"}

    def trace(triplet, frozen):
        fn = jax.make_jaxpr(step.make_step_fn(config, plan, triplet=triplet), return_shape=True)
        traced, (_, metrics) = fn(state, batch, frozen)
        return jit_calls(traced, "rasterize"), metrics

    rasterizations, metrics = trace(False, without)
    assert "triplet" not in metrics and rasterizations == 1
    assert "reconstruction" not in metrics  # weight 0: neither reference objective has it
    with pytest.raises(KeyError, match="vggface2"):
        trace(True, without)
    rasterizations, metrics = trace(True, frozen)
    assert "triplet" in metrics and rasterizations == 2  # the self- and the cross-driven face


def test_the_reconstruction_term_is_logged_when_weighted(data_dir):
    config = tiny(data_dir, loss=dict(reconstruction=2.0))
    state, batch, frozen, plan = abstract_step_inputs(config)
    frozen = {k: v for k, v in frozen.items() if k != "vggface2"}
    step_fn = step.make_step_fn(config, plan, triplet=False)
    _, metrics = jax.eval_shape(step_fn, state, batch, frozen)
    assert metrics["reconstruction"].shape == ()


def test_the_preview_rows_come_in_the_grids_order(data_dir):
    """source, driving, prediction, a row per occlusion mask, the rendered face: a list, as a
    jitted dict would come back with its keys sorted (driving on top)."""
    config = tiny(data_dir)
    state, batch, frozen, _ = abstract_step_inputs(config)
    traced = jax.make_jaxpr(step.make_preview_fn(config))(state, batch, frozen).jaxpr
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(batch)[0]]
    first = len(jax.tree.leaves(state))  # the jaxpr's inputs: state, batch, frozen, flattened
    batch_vars = dict(zip(paths, traced.invars[first : first + len(paths)], strict=True))
    masks = config.model.dense_motion.num_occlusion_masks
    assert masks > 1 and len(traced.outvars) == 3 + masks + 1
    assert traced.outvars[:2] == [batch_vars["['source']"], batch_vars["['driving']"]]
    size = config.model.image_size
    assert {tuple(v.aval.shape) for v in traced.outvars} == {(2, size, size, 3)}


def test_online_regressor_coefficients_need_no_batch_coefficients(data_dir):
    """face3d.coefficients='regressor': the frozen ReconNet regresses every frame's 3DMM
    coefficients inside the step; the batch needs none, the frozen set has the net."""
    config = tiny(data_dir, face3d=dict(coefficients="regressor"))
    state, batch, frozen, plan = abstract_step_inputs(config)
    assert "recon" in frozen
    batch = {k: v for k, v in batch.items() if k not in step.COEFF_KEYS}
    _, metrics = jax.eval_shape(step.make_step_fn(config, plan, triplet=True), state, batch, frozen)
    assert {"warping", "triplet"} <= set(metrics)
    with pytest.raises(ValueError, match="has no"):
        step.step_inputs(batch, tiny(data_dir))  # 'batch' coefficients but none in the batch


def test_eq11_weights_the_triplet_term_by_alpha_and_the_rest_by_beta():
    loss = ml_collections.ConfigDict(dict(alpha=3.0, beta=2.0))
    terms = {
        "perceptual": jnp.float32(1.0),
        "warping": jnp.float32(0.5),
        "triplet": jnp.float32(4.0),
    }
    assert float(step.total_generator_loss(terms, loss)) == pytest.approx(2.0 * 1.5 + 3.0 * 4.0)


# --- equivalences ------------------------------------------------------------------------------


def train_step_once(config, plan, mesh, batch):
    """(state, metrics) after one step from the initial state on `mesh`, on the host."""
    trainer = Trainer(config, mesh, plan)
    state = trainer.init_state()
    trainer.compile(batch)
    state, metrics = trainer.step(state, batch, 0)
    return jax.device_get(state), jax.device_get(metrics)


def assert_close(a, b, rtol, what):
    """Every leaf: max |a - b| <= rtol * max |a|."""
    flat_a, _ = jax.tree_util.tree_flatten_with_path(a)
    for (path, x), y in zip(flat_a, jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        err = np.abs(x - y).max(initial=0.0) / max(np.abs(x).max(initial=0.0), 1e-6)
        assert err <= rtol, f"{what} {jax.tree_util.keystr(path)}: relative error {err:.2e}"


LOSS_TERMS = (*LOSS_KEYS, "discriminator", "generator_gan", "feature_matching", "warping",
              "triplet")  # fmt: skip


def assert_same_updates(params, params_b, lr, what):
    """Parameters one Adam step from the same start: the updates agree to 1e-3 of lr on
    >= 99.5% of the elements and within 2 lr everywhere.

    Why not every update to 1e-5: Adam's first update is lr * g / (|g| + eps) = +-lr for any
    |g| >> eps, so an element whose gradient is exactly 0 in exact arithmetic (conv biases
    feeding a BatchNorm, the keypoint logits' biases under the spatial softmax) gets +-lr
    from its rounding noise, whose sign depends on the reduction order of the sharding.
    """
    leaves = zip(jax.tree.leaves(params), jax.tree.leaves(params_b), strict=True)
    diff = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() / lr for a, b in leaves])
    assert np.mean(diff <= 1e-3) >= 0.995, f"{what}: {np.mean(diff > 1e-3):.2%} of updates differ"
    assert diff.max() <= 2.0 + 1e-3, f"{what}: an update differs by {diff.max():.3f} lr"


def assert_same_step(reference, other, lr, what):
    """Two runs of one step agree: every loss term and the forward state (BatchNorm running
    statistics, spectral-norm vectors) to 1e-5 relative, the updates as
    `assert_same_updates`."""
    (state, metrics), (state_b, metrics_b) = reference, other
    for key in LOSS_TERMS:
        assert metrics_b[key] == pytest.approx(metrics[key], rel=1e-5), f"{what}: {key}"
    assert_close(state.generator_stats, state_b.generator_stats, 1e-5, f"{what} batch stats")
    assert_close(state.discriminator_stats, state_b.discriminator_stats, 1e-5, f"{what} sn")
    for name in ("generator", "discriminator"):
        assert_same_updates(getattr(state, name), getattr(state_b, name), lr, f"{what} {name}")


@pytest.mark.slow
def test_sharded_step_equals_the_one_device_step(data_dir):
    """The full MaskRenderer graph (3D branch, CBAM, multi-scale occlusion, triplet pass):
    1 device == 2 x 4 FSDP, see `assert_same_step`. The batch is split over both mesh axes,
    one example per device, so this is also the 8-way data-parallel step (cross-device
    BatchNorm statistics, gradient reduction), with every leaf above 256 elements sharded."""
    config = tiny(data_dir)
    # one compiled variant that contains everything
    plan = dataclasses.replace(run_plan.resolve(config, 1), triplet_start_step=0)
    batch = next(make_train_iter(config))
    devices = jax.devices()
    reference = train_step_once(config, plan, sharding.make_mesh(config.mesh, devices[:1]), batch)
    assert "triplet" in reference[1]
    config.mesh.update(fsdp=4, fsdp_min_size=256)
    fsdp_mesh = sharding.make_mesh(config.mesh, devices)
    assert sharding.batch_sharding(fsdp_mesh).shard_shape((len(devices),)) == (1,)
    specs = {s.spec for s in jax.tree.leaves(Trainer(config, fsdp_mesh, plan).state_shardings)}
    assert any("fsdp" in spec for spec in specs)  # something is really sharded
    fsdp = train_step_once(config, plan, fsdp_mesh, batch)
    assert_same_step(reference, fsdp, config.optim.learning_rate, "FSDP")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.xdist_group("memory")  # with the other memory-heavy tests, on one worker
def test_two_processes_train_as_one(data_dir, tmp_path):
    """A real 2-process job on loopback (4 CPU devices each, gloo collectives) trains a step
    of MaskRenderer (3D branch, CBAM, multi-scale occlusion, discriminator; the triplet
    phase, which starts later, is `test_sharded_step_equals_the_one_device_step`'s) to the
    same losses, statistics and parameters as 1 process with 8 devices (the same criteria as
    `assert_same_step`)."""
    cache = tmp_path / "jax_cache"
    run_training(tmp_path / "one", 1, data_dir=data_dir, cache_dir=cache,
                 config="configs/tiny.py")  # fmt: skip
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                RUNS,
                "--config",
                str(ROOT / "configs/tiny.py"),
                "--workdir",
                str(tmp_path / "two"),
                "--steps",
                "1",
                "--set",
                f"data.data_dir={str(data_dir)!r}",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
            ],
            env=subprocess_env(cache, 4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
    one, two = metrics_lines(tmp_path / "one")[1], metrics_lines(tmp_path / "two")[1]
    terms = [key for key in LOSS_TERMS if key in one]
    assert {"warping", "generator_gan", "discriminator"} <= set(terms)
    for key in terms:
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    config = common.load_config(str(ROOT / "configs" / "tiny.py"))
    a = load_generator_variables(tmp_path / "one", config)
    b = load_generator_variables(tmp_path / "two", config)
    assert_close(a["batch_stats"], b["batch_stats"], 1e-5, "batch stats")
    assert_same_updates(a["params"], b["params"], config.optim.learning_rate, "2 processes")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_trajectory(data_dir, tmp_path):
    """6 steps straight == 3 steps, SIGKILL right after checkpoint 3, then a resumed run to 6:
    same losses at steps 4-6 (same batches) and bit-identical parameters."""
    cache = tmp_path / "jax_cache"
    extra = ["--set", "checkpoint.every_steps=3", "--set", "train.log_every=1"]
    run_training(tmp_path / "straight", 6, data_dir=data_dir, cache_dir=cache, extra=extra)
    killed = run_training(tmp_path / "resumed", 6, data_dir=data_dir, cache_dir=cache,
                          extra=[*extra, "--kill_after", "3"], check=False)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert max(metrics_lines(tmp_path / "resumed")) == 3
    resumed = run_training(tmp_path / "resumed", 6, data_dir=data_dir, cache_dir=cache, extra=extra)
    assert "resumed from the checkpoint at step 3" in resumed.stderr
    straight, again = metrics_lines(tmp_path / "straight"), metrics_lines(tmp_path / "resumed")
    for s in (4, 5, 6):
        for key in LOSS_KEYS:
            assert again[s][key] == straight[s][key], (s, key)
    config = common.load_config(str(ROOT / "configs" / "tiny.py") + ":fomm")
    a = load_generator_variables(tmp_path / "straight", config)
    b = load_generator_variables(tmp_path / "resumed", config)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(data_dir, tmp_path):
    cache = tmp_path / "jax_cache"
    workdir = tmp_path / "run"
    cmd = [sys.executable, RUNS, "--config", str(ROOT / "configs/tiny.py:fomm"), "--workdir",
           str(workdir), "--steps", "1000", "--set", f"data.data_dir={str(data_dir)!r}",
           "--set", "train.log_every=1", "--set", "checkpoint.every_steps=1000"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=subprocess_env(cache, 1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 600
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, "the run did not get going"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    last = max(metrics_lines(workdir))
    assert 2 <= last < 1000
    assert f"stopped at step {last} on SIGTERM" in err
    events = b"".join(p.read_bytes() for p in (workdir / "tensorboard").iterdir())
    for tag in (b"loss/perceptual", b"loss/generator", b"grad_norm/kp_detector",
                b"time/steps_per_second", b"optim/learning_rate", b"samples"):  # fmt: skip
        assert tag in events, tag
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 1000
    config = tiny(tmp_path, "fomm")
    assert Checkpoints(workdir, config.checkpoint).latest_step() == last


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(
    data_dir, tmp_path, monkeypatch
):
    """The step is replaced by one that returns NaN for 'perceptual' at step 3 (no compile):
    the run stops naming the term and the step; checkpoint 2 stays the latest, intact."""
    config = tiny(data_dir, "fomm", train=dict(num_steps=5, image_every=100),
                  checkpoint=dict(every_steps=1))  # fmt: skip

    def fake_step(self, state, batch, index):
        value = np.nan if index == 2 else 1.0
        metrics = {"perceptual": jnp.float32(value), "generator": jnp.float32(1.0)}
        return state.replace(step=state.step + 1), metrics

    monkeypatch.setattr(Trainer, "compile", lambda self, batch: [])
    monkeypatch.setattr(Trainer, "step", fake_step)
    monkeypatch.setattr(Trainer, "preview", lambda self, state, batch: [])
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite perceptual at step 3"):
        loop.train(config, tmp_path)
    checkpoints = Checkpoints(tmp_path, config.checkpoint)
    assert checkpoints.latest_step() == 2
    plan = run_plan.resolve(config, run_plan.steps_per_epoch(config))
    abstract = Trainer(config, sharding.make_mesh(config.mesh), plan).abstract_state
    state, restored_step = checkpoints.restore(abstract)
    assert restored_step == 2 and int(state.step) == 2


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
def test_cpu_compiler_options_update_donated_parameters_and_adam_state_in_place():
    """A two-conv model's donated parameters and Adam moments: XLA:CPU copies them under its
    default copy insertion, and not under the Trainer's CPU_COMPILER_OPTIONS (region
    analysis). If the first assertion fails, XLA no longer needs the option."""
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")
    tx = optim.adam(ml_collections.ConfigDict(dict(learning_rate=1e-3, b1=0.5, b2=0.999)), [])

    def update(params, opt_state, x):
        grads = jax.grad(lambda p: jnp.sum(conv(jnp.tanh(conv(x, p[0])), p[1]) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state

    params = [jnp.ones((4, 3, 3, 3)) * 0.1, jnp.ones((4, 4, 3, 3)) * 0.1]
    lowered = jax.jit(update, donate_argnums=(0, 1)).lower(
        params, tx.init(params), jnp.ones((2, 3, 8, 8))
    )
    copies = lambda options: lowered.compile(options).as_text().split("ENTRY")[1].count(" copy(")
    assert copies(None) > 0
    assert copies(CPU_COMPILER_OPTIONS) == 0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
def test_cpu_compiler_options_schedule_for_a_smaller_memory_peak():
    """A six-conv network's gradient: XLA:CPU's default scheduler computes the kernel
    transposes of the input gradients early and keeps them across the peak; with the Trainer's
    memory-optimised scheduler the program needs fewer temporaries (4.0 vs 6.75 MiB). If the
    assertion fails, the option no longer buys anything."""
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

    def loss(kernels, x):
        for kernel in kernels:
            x = jax.nn.relu(conv(x, kernel))
        return jnp.sum(x**2)

    kernels = [jnp.full((3, 3, 256, 256), 0.01) for _ in range(6)]
    lowered = jax.jit(jax.grad(loss)).lower(kernels, jnp.ones((2, 16, 16, 256)))
    temporaries = lambda options: lowered.compile(options).memory_analysis().temp_size_in_bytes
    default = {k: v for k, v in CPU_COMPILER_OPTIONS.items() if k != "xla_cpu_scheduler_type"}
    assert temporaries(CPU_COMPILER_OPTIONS) < 0.8 * temporaries(default)
