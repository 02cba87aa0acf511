"""Reenactment (FOMM's relative motion, chunking), video / image files and the demo outputs."""

import jax
import numpy as np
import pytest
from PIL import Image
from scipy.spatial import ConvexHull

from configs.common import load_config
from data_pipeline import synthetic_heads
from maskrenderer_jax import media
from maskrenderer_jax.face3d.branch import branch_inputs
from maskrenderer_jax.inference import demo_outputs
from maskrenderer_jax.inference.reenact import (
    Reenactor,
    get_reenactor,
    reenact,
    relative_keypoints,
)
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.train.frozen import morphable_model

SIZE = 64  # configs/tiny.py


def fomm_normalize_kp(kp_source, kp_driving, kp_driving_initial, adapt_movement_scale):
    """FOMM's animate.normalize_kp(use_relative_movement=True, use_relative_jacobian=True),
    transcribed to numpy."""
    if adapt_movement_scale:
        source_area = ConvexHull(kp_source["value"][0]).volume
        driving_area = ConvexHull(kp_driving_initial["value"][0]).volume
        adapt_movement_scale = np.sqrt(source_area) / np.sqrt(driving_area)
    else:
        adapt_movement_scale = 1
    kp_new = dict(kp_driving)
    kp_value_diff = kp_driving["value"] - kp_driving_initial["value"]
    kp_value_diff *= adapt_movement_scale
    kp_new["value"] = kp_value_diff + kp_source["value"]
    jacobian_diff = np.matmul(kp_driving["jacobian"], np.linalg.inv(kp_driving_initial["jacobian"]))
    kp_new["jacobian"] = np.matmul(jacobian_diff, kp_source["jacobian"])
    return kp_new


def random_kp(rng, batch, num_kp=10):
    return {
        "value": rng.uniform(-0.8, 0.8, (batch, num_kp, 2)).astype(np.float32),
        "jacobian": (np.eye(2) + 0.3 * rng.normal(size=(batch, num_kp, 2, 2))).astype(np.float32),
    }


@pytest.mark.parametrize("adapt", [False, True])
def test_relative_keypoints_matches_fomm(adapt):
    rng = np.random.default_rng(0)
    kp_s, kp_d, kp_d0 = random_kp(rng, 3), random_kp(rng, 3), random_kp(rng, 3)
    kp_d0["value"] *= 0.5  # a smaller driver: the hull ratio is far from 1
    got = relative_keypoints(kp_s, kp_d, kp_d0, adapt_movement_scale=adapt)
    want = fomm_normalize_kp(kp_s, kp_d, kp_d0, adapt)
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["jacobian"], want["jacobian"], rtol=1e-4, atol=1e-5)
    if adapt:  # the scale is the first batch element's, ~2 here, and applied to all
        scale = (got["value"] - kp_s["value"]) / (kp_d["value"] - kp_d0["value"])
        np.testing.assert_allclose(scale, scale[0, 0, 0], rtol=1e-3)
        assert 1.5 < scale[0, 0, 0] < 2.5


def test_relative_keypoints_without_jacobians_and_broadcast():
    rng = np.random.default_rng(1)
    kp_s, kp_d, kp_d0 = random_kp(rng, 1), random_kp(rng, 4), random_kp(rng, 1)
    values = [{"value": kp["value"]} for kp in (kp_s, kp_d, kp_d0)]
    got = relative_keypoints(*values)
    assert set(got) == {"value"}
    want = kp_s["value"] + kp_d["value"] - kp_d0["value"]
    np.testing.assert_allclose(got["value"], want, rtol=1e-6, atol=1e-6)
    full = relative_keypoints(kp_s, kp_d, kp_d0)  # [1] source and initial against [4] frames
    assert full["jacobian"].shape == (4, 10, 2, 2)


def compile_fast(fn, *args):
    """fn compiled for args without XLA's backend optimisations (5x faster to compile on CPU;
    for test-side reference programs, not the code under test)."""
    options = {"xla_backend_optimization_level": 0}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


def random_variables(config, seed):
    key = jax.random.key(seed)
    return compile_fast(lambda k: mr.init_variables(config.model, k), key)(key)


@pytest.fixture(scope="module")
def tiny():
    """configs/tiny.py (the 3D branch on), random weights, the synthetic 3DMM, a Reenactor
    with chunks of 4 frames."""
    config = load_config("configs/tiny.py")
    variables = random_variables(config, 0)
    rng = np.random.default_rng(0)
    return {
        "config": config,
        "variables": variables,
        "face_model": morphable_model(config),
        "reenactor": get_reenactor(config.model, chunk_size=4),  # the demo reuses it
        "source": rng.uniform(size=(SIZE, SIZE, 3)).astype(np.float32),
        "coeffs": synthetic_heads.clip_coefficients(
            synthetic_heads.identity_coefficients(rng), rng, 5
        ),
    }


def test_identity_motion_reproduces_animate_with_source_keypoints(tiny):
    """Driving = the source repeated: relative keypoints and 3DMM coefficients are the
    source's own, every frame equals animate(source, kp_s, kp_s)."""
    source, coeffs = tiny["source"], tiny["coeffs"][0]
    out = tiny["reenactor"](
        tiny["variables"],
        source,
        np.stack([source] * 5),  # 2 chunks of 4, the second padded
        face_model=tiny["face_model"],
        source_coeffs=coeffs,
        driving_coeffs=np.stack([coeffs] * 5),
    )
    assert out.shape == (5, SIZE, SIZE, 3) and out.dtype == np.float32
    model = tiny["reenactor"].model

    def identity(variables, face_model, image, c):
        kp = model.apply(variables, image, train=False, method=mr.MaskRenderer.detect)
        inputs = branch_inputs(face_model, c, c, SIZE)  # absolute: target = S exactly
        return model.apply(
            variables, image, kp, kp, **inputs, train=False, method=mr.MaskRenderer.animate
        )["prediction"]

    args = (tiny["variables"], tiny["face_model"], source[None], coeffs[None])
    want = compile_fast(identity, *args)(*args)[0]
    np.testing.assert_allclose(out, np.broadcast_to(want, out.shape), atol=2e-5)
    assert np.ptp(out) > 0.01  # not a constant image that would match anything


def test_chunked_equals_single_batch(tiny):
    rng = np.random.default_rng(2)
    driving = rng.uniform(size=(5, SIZE, SIZE, 3)).astype(np.float32)
    kwargs = dict(
        face_model=tiny["face_model"],
        source_coeffs=tiny["coeffs"][0],
        driving_coeffs=tiny["coeffs"],
    )
    chunked = tiny["reenactor"](tiny["variables"], tiny["source"], driving, **kwargs)
    whole = reenact(tiny["variables"], tiny["config"].model, tiny["source"], driving,
                    chunk_size=5, **kwargs)  # fmt: skip
    np.testing.assert_allclose(chunked, whole, atol=2e-5)
    assert np.abs(chunked[1:] - chunked[:1]).max() > 1e-3  # the frames do differ


def test_3d_model_needs_coefficients(tiny):
    with pytest.raises(ValueError, match="driving_coeffs"):
        tiny["reenactor"](tiny["variables"], tiny["source"], tiny["source"][None])


def test_absolute_mode_is_driving_keypoints():
    """FOMM (no 3D branch), relative=False: each frame is animate(source, kp_s, kp_d)."""
    config = load_config("configs/tiny.py:fomm")
    variables = random_variables(config, 1)
    rng = np.random.default_rng(3)
    source = rng.uniform(size=(SIZE, SIZE, 3)).astype(np.float32)
    driving = rng.uniform(size=(3, SIZE, SIZE, 3)).astype(np.float32)
    out = Reenactor(config.model, chunk_size=3)(variables, source, driving, relative=False)
    model = mr.build_model(config.model)
    sources = np.stack([source] * 3)
    want = jax.jit(lambda v: model.apply(v, sources, driving, train=False)["prediction"])(variables)
    np.testing.assert_allclose(out, want, atol=2e-5)


def smooth_frames(num_frames, height, width):
    """[T, H, W, 3] float32 in [0, 1]: moving gradients, colour changing slowly (yuv420p
    halves the chroma resolution)."""
    y, x = np.mgrid[0 : 1 : height * 1j, 0 : 1 : width * 1j]
    t = np.arange(num_frames)[:, None, None, None] / num_frames
    phase = np.array([0.0, 0.3, 0.6])
    wave = np.sin(np.pi * (x[..., None] + y[..., None] + t) + phase)
    return (0.5 + 0.3 * wave).astype(np.float32)


@pytest.mark.parametrize("shape", [(7, 48, 64), (5, 33, 31)])
def test_mp4_round_trip(tmp_path, shape):
    frames = smooth_frames(*shape)
    path = media.write_mp4(tmp_path / "clip.mp4", frames, fps=25)
    back = media.read_frames(path)
    t, h, w = shape
    assert back.shape == (t, h + h % 2, w + w % 2, 3) and back.dtype == np.uint8
    error = np.abs(back[:, :h, :w].astype(np.float32) - media.to_uint8(frames))
    assert error.mean() < 3.0 and error.max() < 20, (error.mean(), error.max())


def test_image_grid_and_png(tmp_path):
    a = np.zeros((1, 4, 6, 3), np.uint8)  # a single image in a row of 3
    b = np.stack([np.full((4, 6, 3), 10 * i, np.uint8) for i in range(3)])
    grid = media.image_grid([a, b, b.astype(np.float32) / 255.0])
    assert grid.shape == (12, 18, 3) and grid.dtype == np.uint8
    assert (grid[:4, :6] == 0).all() and (grid[:4, 6:] == 255).all()  # empty cells: white
    assert (grid[4:8, 12:18] == 20).all() and (grid[8:12, 6:12] == 10).all()
    path = media.write_png(tmp_path / "grid.png", grid)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)


def test_demo_outputs_writes_video_and_grid(tiny, tmp_path):
    paths = demo_outputs.write_reenactment(
        tiny["config"],
        tiny["variables"],
        tmp_path,
        face_model=tiny["face_model"],
        num_frames=6,
        chunk_size=4,  # the fixture's compiled Reenactor
    )
    assert paths == {"mp4": tmp_path / "reenactment.mp4", "png": tmp_path / "reenactment.png"}
    frames = media.read_frames(paths["mp4"])
    assert frames.shape == (6, 2 * SIZE, 3 * SIZE, 3)  # cross and self rows; src | drv | out
    # The self block's source is its driving clip's first frame (h264 at crf 18 errs by ~3
    # grey levels on average on these frames).
    source_column, driving_column = frames[0, SIZE:, :SIZE], frames[0, SIZE:, SIZE : 2 * SIZE]
    assert np.abs(source_column.astype(float) - driving_column).mean() < 5
    assert np.abs(frames[0, :SIZE, :SIZE].astype(float) - source_column).mean() < 5
    grid = np.asarray(Image.open(paths["png"]))
    assert grid.shape == (6 * SIZE, 6 * SIZE, 3)  # 2 blocks x 3 rows; 6 frames -> 6 columns


def test_animate_command_on_the_exported_held_out_pair(tiny, tmp_path):
    """The demo's last step: demo_outputs --export_inputs writes a held-out source photo, a
    driving mp4 and their 3DMM coefficients; the animate command on them (a MaskRenderer
    variables directory, known coefficients) equals the Reenactor on the same decoded inputs."""
    from maskrenderer_jax import params_io
    from maskrenderer_jax.animate import main as animate

    paths = demo_outputs.export_inputs(tiny["config"], tmp_path / "held_out", num_frames=5)
    params_io.save_variables(tmp_path / "variables", tiny["variables"])
    out = tmp_path / "animated.npz"
    summary = animate([str(a) for a in (
        "--source", paths["source"], "--driving", paths["driving"], "--checkpoint",
        tmp_path / "variables", "--config", "configs/tiny.py", "--coefficients",
        paths["coefficients"], "--no-crop", "--batch-size", 4, "--out", out)])  # fmt: skip
    frames = np.load(out)["frames"]
    assert frames.shape == (5, SIZE, SIZE, 3) and summary["frames"] == 5
    coeffs = np.load(paths["coefficients"])
    want = tiny["reenactor"](
        tiny["variables"],
        media.read_image(paths["source"]) / np.float32(255),
        media.read_frames(paths["driving"]) / np.float32(255),
        face_model=tiny["face_model"],
        source_coeffs=coeffs["source"],
        driving_coeffs=coeffs["driving"],
    )
    np.testing.assert_allclose(frames, want, atol=1e-5)
