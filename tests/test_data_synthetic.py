"""synthetic_heads: rendered talking heads with ground-truth coefficients (the default data
set of the demo and the tests): schema, motion within clips, compositing, determinism."""

import numpy as np
import pytest

from data_pipeline import build, frame_source, sources, synthetic_heads, train_iter
from data_pipeline.config import data_config
from maskrenderer_jax.face3d import synthetic_bfm

SMALL = dict(train_identities=2, test_identities=2, clips_per_identity=1, frames_per_clip=6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    build.build("synthetic_heads", root, synthetic=SMALL)
    return root


def test_schema_counts_and_coefficients(data_dir):
    report = (data_dir / "synthetic_heads" / "build_report.json").read_text()
    assert '"has_coeffs": true' in report
    source = frame_source.FrameSource(data_dir, "synthetic_heads", "train")
    assert source.index.identities == ("synth0000", "synth0001") and len(source) == 12
    record = source[7]
    assert record["image"].shape == (64, 64, 3) and record["coeffs"].shape == (257,)
    assert record["clip"] == b"synth0001#clip00#000000#000006" and record["frame"] == 1
    # The stored coefficients are the generator's (a pure function of seed, identity, clip).
    rng = np.random.default_rng([0, 1])
    identity = synthetic_heads.identity_coefficients(rng)
    expected = synthetic_heads.clip_coefficients(identity, np.random.default_rng([0, 1, 0]), 6)
    np.testing.assert_allclose(record["coeffs"], expected[1], atol=1e-6)


def test_frames_show_a_moving_face_over_the_identity_background(data_dir):
    source = frame_source.FrameSource(data_dir, "synthetic_heads", "train")
    frames = np.stack([source[i]["image"] for i in range(6)]).astype(np.float32)
    rng = np.random.default_rng([0, 0])  # identity 0: its coefficients, then its background
    synthetic_heads.identity_coefficients(rng)
    background = synthetic_heads.background(rng, 64) * 255
    # Corners are background; the centre is face (it differs from the background there).
    np.testing.assert_allclose(
        frames[:, :3, :3], np.broadcast_to(background[:3, :3], (6, 3, 3, 3)), atol=2
    )
    assert np.abs(frames[:, 24:40, 24:40] - background[24:40, 24:40]).mean() > 20
    assert np.abs(np.diff(frames, axis=0)).mean() > 0.5  # the head moves
    other = np.stack([source[6 + i]["image"] for i in range(6)]).astype(np.float32)
    assert np.abs(frames - other).mean() > 10  # identities differ


def test_motion_is_smooth_with_jaw_and_blinks():
    identity = synthetic_heads.identity_coefficients(np.random.default_rng(0))
    c = synthetic_heads.clip_coefficients(identity, np.random.default_rng(1), 64)
    pose = c[:, 224:227]
    assert np.abs(np.diff(pose, axis=0)).max() < 0.15  # radians per frame: smooth
    assert 0.05 < np.abs(pose[:, 1]).max() < 0.4  # it turns, within a plausible yaw
    jaw = c[:, 80 + synthetic_bfm.EXP_BASES.index("jaw open")]
    blink = c[:, 80 + synthetic_bfm.EXP_BASES.index("eyes closed")]
    assert jaw.min() >= 0 and jaw.max() > 0.5
    assert blink.max() > 1.0 and np.mean(blink < 0.1) > 0.5  # short closures
    np.testing.assert_array_equal(c[:, :80], np.repeat(identity[None, :80], 64, 0))


def test_resumed_build_is_identical(data_dir, tmp_path):
    staged = sorted((data_dir / "synthetic_heads" / "staging" / "test").glob("*.npz"))
    build.build("synthetic_heads", tmp_path, synthetic=SMALL)
    (tmp_path / "synthetic_heads" / "staging" / "test" / staged[0].name).unlink()
    report = build.build("synthetic_heads", tmp_path, synthetic=SMALL)
    assert report.assembled
    a = frame_source.FrameSource(data_dir, "synthetic_heads", "test")
    b = frame_source.FrameSource(tmp_path, "synthetic_heads", "test")
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])


def test_train_iter_builds_the_default_set_on_first_use(tmp_path):
    config = data_config(data_dir=str(tmp_path), batch_size=2, synthetic=SMALL)
    iterator = train_iter.make_train_iter(config)
    batch = next(iterator)
    iterator.close()
    assert batch["source"].shape == (2, 64, 64, 3) and batch["source_coeffs"].shape == (2, 257)
    assert (tmp_path / "synthetic_heads" / "1.0.0" / "dataset_info.json").exists()


def test_a_set_built_from_other_settings_is_an_error_not_reused(data_dir):
    """The config's data.synthetic must be what the set was rendered from (render size
    aside): another seed or identity count names the set and every difference."""
    same = data_config(data_dir=str(data_dir), synthetic=dict(SMALL, image_size=128))
    assert len(sources.open_split(same, "train")) == 12
    other = data_config(data_dir=str(data_dir), synthetic=dict(SMALL, seed=1, test_identities=3))
    with pytest.raises(ValueError) as error:
        sources.open_split(other, "train")
    message = str(error.value)
    assert str(data_dir / "synthetic_heads" / "1.0.0") in message
    assert "seed: built with 0, the config asks for 1" in message
    assert "test_identities: built with 2, the config asks for 3" in message


@pytest.mark.slow
@pytest.mark.parametrize("size", [128, 256])
def test_other_resolutions(tmp_path, size):
    small = dict(SMALL, test_identities=0, frames_per_clip=2)
    build.build("synthetic_heads", tmp_path, image_size=size, synthetic=small)
    record = frame_source.FrameSource(tmp_path, "synthetic_heads", "train")[0]
    assert record["image"].shape == (size, size, 3)
