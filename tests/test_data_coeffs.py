"""The 3DMM pass of a build (--recon_variables): every frame gets Deep3DFace's regressor's
coefficients of its FOMM-crop-resized image, with variables saved by params_io (random here,
heads included, so the coefficients depend on the image)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import build, fake_data, frame_source, recon_coeffs, staging, train_iter
from data_pipeline.config import data_config
from maskrenderer_jax import params_io
from maskrenderer_jax.face3d import recon_net

SIZE = 32


@pytest.fixture(scope="module")
def recon_variables(tmp_path_factory):
    net = recon_net.ReconNet()
    init = jax.jit(lambda key: net.init(key, jnp.zeros((1, 32, 32, 3)), train=False))
    variables = jax.tree.map(np.asarray, init(jax.random.key(0)))
    # The heads start at zero (as Deep3DFace's): randomise them so the output varies.
    rng = np.random.default_rng(1)
    for name, head in variables["params"].items():
        if name.startswith("final_layers"):
            head["kernel"] = rng.normal(0, 0.05, head["kernel"].shape).astype(np.float32)
    path = params_io.save_variables(tmp_path_factory.mktemp("recon") / "vars", variables)
    return path, variables


@pytest.mark.slow  # compiles ResNet-50 at 224 px (~30 s on 2 cores)
def test_build_fills_coefficients_of_every_frame(tmp_path, recon_variables):
    path, variables = recon_variables
    layout = fake_data.write_fomm_layout(
        tmp_path / "raw", identities={"train": 2, "test": 1}, clips_per_identity=1,
        num_frames=3, size=SIZE,
    )  # fmt: skip
    report = build.build("voxceleb", tmp_path / "tfds", manual_dir=layout, image_size=SIZE,
                         num_workers=0, recon_variables=path, recon_batch_size=4)  # fmt: skip
    assert report.has_coeffs
    source = frame_source.FrameSource(tmp_path / "tfds", "voxceleb", "train")
    records = [source[i] for i in range(len(source))]
    images = jnp.asarray(np.stack([r["image"] for r in records]), jnp.float32) / 255
    expected = recon_net.ReconNet().apply(
        variables, recon_net.preprocess_fomm_crop(images), train=False
    )
    got = np.stack([r["coeffs"] for r in records])
    assert got.shape == (6, 257) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.std(got[0] - got[3]) > 1e-3  # it depends on the image

    # The training batches carry them (mirrored with flipped images).
    config = data_config(dataset="voxceleb", data_dir=str(tmp_path / "tfds"), image_size=SIZE,
                         batch_size=2)  # fmt: skip
    iterator = train_iter.make_train_iter(config)
    batch = next(iterator)
    iterator.close()
    for key in ("source_coeffs", "driving_coeffs", "cross_coeffs"):
        assert batch[key].shape == (2, 257) and batch[key].dtype == np.float32
    record = source.record(batch["source_clip"][0], batch["source_frame"][0])
    sign = -1.0 if batch["flipped"][0] else 1.0
    assert batch["source_coeffs"][0, 225] == pytest.approx(sign * got[record, 225])

    # Re-running does not recompute them (resumable) and keeps the data set.
    again = build.build("voxceleb", tmp_path / "tfds", manual_dir=layout, image_size=SIZE,
                        num_workers=0, recon_variables=path)  # fmt: skip
    assert again.has_coeffs and not again.assembled


def test_fill_pass_batches_pads_and_skips_done_clips(tmp_path, monkeypatch):
    # The network replaced by a fake that encodes each frame's mean: checks the plumbing
    # (fixed-size padded batches, order, resumability) without compiling ResNet-50.
    calls = []

    def fake_fn(variables):
        def fn(frames):
            calls.append(frames.shape)
            return np.repeat(frames.mean((1, 2, 3))[:, None], 257, axis=1)

        return fn

    monkeypatch.setattr(recon_coeffs, "coefficient_fn", fake_fn)
    monkeypatch.setattr(recon_coeffs.params_io, "load_variables", lambda d: {})
    layout = fake_data.write_fomm_layout(
        tmp_path / "raw", identities={"train": 2}, num_frames=5, size=SIZE
    )
    report = build.build("voxceleb", tmp_path / "tfds", manual_dir=layout, image_size=SIZE,
                         num_workers=0, recon_variables="unused", recon_batch_size=4)  # fmt: skip
    assert report.has_coeffs and calls == [(4, SIZE, SIZE, 3)] * 8  # 4 clips x (4 + 1 padded)
    source = frame_source.FrameSource(tmp_path / "tfds", "voxceleb", "train")
    for i in (0, 4, 13):
        record = source[i]
        assert record["coeffs"][0] == pytest.approx(record["image"].mean(), rel=1e-6)
    paths = sorted((tmp_path / "tfds" / "voxceleb" / "staging" / "train").glob("*.npz"))
    assert recon_coeffs.fill_staged_coeffs(paths, "unused") == 0  # nothing left to do
    assert staging.staged_info(paths[0])["has_coeffs"]
