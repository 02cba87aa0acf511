"""ArcFace IResNet vs the PyTorch mirror (tests/arcface_torch.py) with random weights through
converters/arcface.py: parity per layer and end to end, strict errors, the round trip, the
architecture read off the keys, the CLI, random init; and the 5-point alignment against its
definition, scikit-image and OpenCV."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from converters import arcface as converter
from converters import torch_layout
from maskrenderer_jax.nets import arcface
from tests import arcface_torch
from tests.torch_utils import nhwc

ATOL = 1e-4
SMALL = (1, 1, 1, 1)  # one block per layer: every kind of module, a fraction of the cost


def flat(variables):
    return dict(torch_layout._flatten(variables))


def random_uint8(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 112, 112, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def small():
    net = arcface_torch.randomize_(arcface_torch.IResNet(SMALL), seed=0)
    return net, net.state_dict()


@torch.no_grad()
def torch_stages(net, images_uint8):
    """{'stem', 'layer1'..'layer4'} NHWC and the embedding, from inference.py's input."""
    x = net.prelu(net.bn1(net.conv1(arcface_torch.reference_input(images_uint8))))
    stages = {"stem": nhwc(x)}
    for i in range(1, 5):
        x = getattr(net, f"layer{i}")(x)
        stages[f"layer{i}"] = nhwc(x)
    return stages, net(arcface_torch.reference_input(images_uint8)).numpy()


def parity(net, state, stage_sizes, images_uint8):
    """Max abs error of the embedding (and of each stage's output) vs torch."""
    variables = converter.import_state_dict(state)
    assert arcface.stage_sizes_of(variables) == stage_sizes
    images = images_uint8.astype(np.float32) / 255.0  # the module's [0, 1] input
    model = arcface.IResNet(stage_sizes=stage_sizes)
    got, state_out = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(
        variables, images
    )
    expected_stages, expected = torch_stages(net, images_uint8)
    inter = state_out["intermediates"]
    got_stages = {"stem": inter["prelu"]["__call__"][0]}
    for i, blocks in enumerate(stage_sizes, start=1):
        got_stages[f"layer{i}"] = inter[f"layer{i}_{blocks - 1}"]["__call__"][0]
    for name, ref in expected_stages.items():
        np.testing.assert_allclose(got_stages[name], ref, atol=ATOL, rtol=0, err_msg=name)
    assert got.shape == (len(images), arcface.EMBEDDING_SIZE) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # Not vacuous: O(1) embeddings that differ between images.
    assert expected.std() > 0.5 and np.abs(expected[0] - expected[1]).max() > 0.5
    # The module-level jitted `embed` reads the architecture off the variables.
    np.testing.assert_allclose(arcface.embed(variables, images), got, atol=1e-6, rtol=0)
    return float(np.abs(np.asarray(got) - expected).max())


def test_small_iresnet_matches_torch(small):
    error = parity(*small, SMALL, random_uint8(3, seed=1))
    print(f"IResNet {list(SMALL)}: max abs error of the embedding {error:.2e}")


@pytest.mark.slow
def test_iresnet50_matches_torch():
    net = arcface_torch.randomize_(arcface_torch.IResNet(arcface.ARCHS["r50"]), seed=2)
    error = parity(net, net.state_dict(), arcface.ARCHS["r50"], random_uint8(2, seed=3))
    print(f"iresnet50: max abs error of the embedding {error:.2e}")


@pytest.mark.parametrize("arch", ["r50", "r100"])
def test_published_architectures_map_every_key(arch):
    """The layout of r50/r100 against the mirror's state dict, built without memory (meta)."""
    with torch.device("meta"):
        state = arcface_torch.IResNet(arcface.ARCHS[arch]).state_dict()
    assert converter.stage_sizes_from_keys(state) == arcface.ARCHS[arch]
    entries = torch_layout.layout(converter.abstract_variables(arcface.ARCHS[arch]))
    expected = {k: tuple(v.shape) for k, v in state.items() if "num_batches" not in k}
    assert {e.torch_key: e.torch_shape for e in entries} == expected
    assert expected["fc.weight"] == (512, 512 * 7 * 7)
    assert converter.arch_name(arcface.ARCHS[arch]).startswith(f"{arch} [")


def test_mismatches_are_all_listed(small):
    _, state = small
    state = dict(state)
    state["layer2.0.prelu.alpha"] = state.pop("layer2.0.prelu.weight")  # renamed
    del state["features.running_var"]
    state["fc.weight"] = torch.zeros(512, 512 * 4 * 4)  # a 64 px model's fc
    state["layer1.0.downsample.0.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(torch_layout.ConversionError) as info:
        converter.import_state_dict(state, source="backbone.pth")
    message = str(info.value)
    assert "backbone.pth does not fit the model" in message
    assert "2 missing:" in message and "1 unexpected:" in message and "2 mismatched" in message
    for key in ("layer2.0.prelu.weight", "features.running_var", "layer2.0.prelu.alpha"):
        assert f"    {key}\n" in message + "\n", key
    assert "fc.weight: checkpoint (512, 8192), model (512, 25088)" in message
    assert "layer1.0.downsample.0.weight: checkpoint (64, 64, 3, 3), model (64, 64, 1, 1)" in (
        message
    )


def test_forced_arch_lists_the_blocks_it_lacks(small):
    _, state = small
    with pytest.raises(torch_layout.ConversionError) as info:
        converter.import_state_dict(state, arch="r50", source="backbone.pth")
    message = str(info.value)
    assert message.startswith(
        "backbone.pth (read as r50 [3, 4, 14, 3]; its keys have [1, 1, 1, 1]) does not fit"
    )
    assert "    layer3.13.prelu.weight\n" in message and "unexpected" not in message


def test_not_an_iresnet():
    with pytest.raises(torch_layout.ConversionError, match="not an arcface_torch backbone.*list"):
        converter.import_state_dict([1], source="x.pth")
    state = {f"module.layer{i}.0.conv1.weight": torch.zeros(1) for i in range(1, 4)}
    with pytest.raises(
        torch_layout.ConversionError, match=r"blocks per layer1..4 \[0, 0, 0, 0\].*'module\.'"
    ):
        converter.import_state_dict(state, source="x.pth")


def test_training_checkpoint_reads_the_backbone(small):
    _, state = small
    a = flat(converter.import_state_dict(state))
    b = flat(converter.import_state_dict({"state_dict_backbone": state, "epoch": 3}))
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=str(key))


def test_round_trip_is_exact(small):
    net, state = small
    variables = converter.import_state_dict(state)
    exported = converter.export_state_dict(variables)
    assert set(exported) == set(state)
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
    again = flat(converter.import_state_dict(exported))
    for key, value in flat(variables).items():
        np.testing.assert_array_equal(value, again[key], err_msg=str(key))


def test_cli_import_probe_export(tmp_path, small, capsys):
    net, state = small
    torch.save(state, tmp_path / "backbone.pth")
    images = random_uint8(2, seed=4)
    np.savez(tmp_path / "images.npz", images=images.astype(np.float32) / 255.0)
    converter.main(
        [
            "--checkpoint",
            str(tmp_path / "backbone.pth"),
            "--out",
            str(tmp_path / "vars"),
            "--probe",
            str(tmp_path / "images.npz"),
            "--probe-out",
            str(tmp_path / "out.npz"),
        ]
    )
    out = capsys.readouterr().out
    assert "IResNet blocks [1, 1, 1, 1]" in out and "wrote embedding (2, 512)" in out
    with torch.no_grad():
        expected = net(arcface_torch.reference_input(images)).numpy()
    with np.load(tmp_path / "out.npz") as got:
        assert got.files == ["embedding"] and got["embedding"].dtype == np.float32
        np.testing.assert_allclose(got["embedding"], expected, atol=ATOL, rtol=0)

    exported = tmp_path / "exported.pth"
    converter.main(["--variables", str(tmp_path / "vars"), "--export", str(exported)])
    fresh = arcface_torch.IResNet(SMALL).eval()
    fresh.load_state_dict(torch.load(exported, weights_only=True), strict=True)
    with torch.no_grad():
        np.testing.assert_array_equal(
            fresh(arcface_torch.reference_input(images)).numpy(), expected
        )
    with pytest.raises(SystemExit):  # --arch must agree with converted variables
        converter.main(["--variables", str(tmp_path / "vars"), "--arch", "r50"])
    assert "holds blocks [1, 1, 1, 1]" in capsys.readouterr().err


def test_probe_rejects_unaligned_sizes(tmp_path):
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 128, 128, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[B, 112, 112, 3\] aligned crops.*\(1, 128, 128, 3\)"):
        converter.read_probe_inputs(str(tmp_path / "in.npz"))
    with pytest.raises(ValueError, match="fc expects a 7x7 layer4"):
        arcface.IResNet(stage_sizes=SMALL).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_random_init_fits_the_converter_and_warns(caplog):
    variables = arcface.init_random(jax.random.key(0), SMALL)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), converter.abstract_variables(SMALL))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), variables) == shapes
    assert float(np.std(flat(variables)[("params", "conv1", "kernel")])) > 0
    np.testing.assert_array_equal(flat(variables)[("params", "prelu", "negative_slope")], 0.25)
    with caplog.at_level(logging.WARNING):
        message = arcface.warn_random_weights()
    assert "RANDOM weights" in message and "meaningless" in message
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == message


# ------------------------------------------------------------------------------- alignment


def similarity(scale, angle, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1]])


def apply(matrix, points):
    return points @ np.asarray(matrix)[:2, :2].T + np.asarray(matrix)[:2, 2]


def test_template_is_insightfaces():
    np.testing.assert_array_equal(arcface.arcface_template(112), arcface.ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(arcface.arcface_template(224), arcface.ARCFACE_TEMPLATE_112 * 2)
    # 128: the 112 template centred (x + 8), as insightface's estimate_norm.
    np.testing.assert_allclose(
        arcface.arcface_template(128), arcface.ARCFACE_TEMPLATE_112 + [8.0, 0.0], atol=1e-5
    )
    with pytest.raises(ValueError, match="multiples of 112 or 128"):
        arcface.arcface_template(100)


@pytest.mark.parametrize("params", [(2.3, 0.4, 140.0, 95.0), (0.6, -2.8, -10.0, 300.0)])
def test_similarity_transform_recovers_a_known_transform(params):
    template = arcface.ARCFACE_TEMPLATE_112.astype(np.float64)
    known = similarity(*params)
    landmarks = apply(known, template)  # the template placed in a larger frame
    np.testing.assert_allclose(arcface.similarity_transform(template, landmarks), known, atol=1e-4)
    # The alignment direction (landmarks -> template) is the inverse.
    got = arcface.similarity_transform(landmarks, template)
    np.testing.assert_allclose(got, np.linalg.inv(known), atol=1e-4)
    # Batched: [..., 5, 2] -> [..., 3, 3].
    both = arcface.similarity_transform(np.stack([landmarks, template]), template)
    np.testing.assert_allclose(both[1], np.eye(3), atol=1e-4)


def test_similarity_transform_is_skimages():
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(0)
    template = arcface.ARCFACE_TEMPLATE_112.astype(np.float64)
    for i in range(4):
        landmarks = apply(similarity(1.5 + i, 0.7 * i - 1, 60.0, 80.0), template)
        landmarks += rng.normal(scale=3.0, size=landmarks.shape)  # no exact fit
        if i == 3:
            landmarks[:, 0] *= -1  # a mirrored face: the best fit must still not reflect
        expected = transform.SimilarityTransform.from_estimate(landmarks, template).params
        got = np.asarray(arcface.similarity_transform(landmarks, template))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)
        assert np.linalg.det(got[:2, :2]) > 0


def test_align_crop_samples_the_inverse_transform():
    """Bilinear sampling reproduces an affine image exactly: crop(x, y) = f(T^-1 (x, y))."""
    known = similarity(1.8, 0.25, 30.0, 12.0)  # crop -> image coordinates
    landmarks = apply(known, arcface.ARCFACE_TEMPLATE_112.astype(np.float64))
    ys, xs = np.mgrid[0:260, 0:240].astype(np.float64)
    coefficients = np.array([[0.003, 0.001, 0.1], [-0.002, 0.0035, 0.5], [0.001, -0.001, 0.4]])
    image = np.stack([a * xs + b * ys + c for a, b, c in coefficients], axis=-1)
    crop = np.asarray(jax.jit(arcface.align_crop)(image.astype(np.float32), landmarks))
    assert crop.shape == (112, 112, 3) and crop.dtype == np.float32
    cy, cx = np.mgrid[0:112, 0:112].astype(np.float64)
    sx, sy = apply(known, np.stack([cx, cy], axis=-1)).transpose(2, 0, 1)
    expected = np.stack([a * sx + b * sy + c for a, b, c in coefficients], axis=-1)
    inside = (sx >= 0) & (sx <= 239) & (sy >= 0) & (sy <= 259)
    assert inside.mean() > 0.5 and (~inside).sum() > 100  # the crop leaves the image
    np.testing.assert_allclose(crop[inside], expected[inside], atol=1e-4)
    outside = (sx < -1) | (sx > 240) | (sy < -1) | (sy > 260)
    assert outside.sum() > 100 and np.all(crop[outside] == 0)  # cv2's zero border


def test_align_crop_is_insightfaces_norm_crop():
    cv2 = pytest.importorskip("cv2")
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(1)
    # A smooth random image (cv2 quantises the sampling position to 1/32 px).
    image = cv2.GaussianBlur(rng.uniform(size=(200, 180, 3)).astype(np.float32), (0, 0), 4)
    image = (image - image.min()) / (image.max() - image.min())
    landmarks = apply(similarity(1.3, -0.2, 40.0, 30.0), arcface.ARCFACE_TEMPLATE_112)
    landmarks = (landmarks + rng.normal(scale=2.0, size=(5, 2))).astype(np.float32)
    # insightface face_align.norm_crop, verbatim in effect.
    tform = transform.SimilarityTransform.from_estimate(landmarks, arcface.ARCFACE_TEMPLATE_112)
    expected = cv2.warpAffine(image, tform.params[0:2, :], (112, 112), borderValue=0.0)
    got = np.asarray(arcface.align_crop(image, landmarks))
    error = np.abs(got - expected).max(axis=-1)
    # Inside the image the difference is cv2's 1/32 px rounding of the position times the
    # gradient (< 0.11 / px here); where a sample blends with the zero border it is up to
    # 1/64 of the intensity.
    cy, cx = np.mgrid[0:112, 0:112].astype(np.float64)
    sx, sy = apply(np.linalg.inv(tform.params), np.stack([cx, cy], axis=-1)).transpose(2, 0, 1)
    interior = (sx >= 0) & (sx <= 179) & (sy >= 0) & (sy <= 199)
    assert interior.mean() > 0.5 and (~interior).sum() > 100
    print(
        f"align_crop vs cv2: max abs {error[interior].max():.2e} inside the image, "
        f"{error.max():.2e} at its border, mean {error.mean():.2e}"
    )
    assert error[interior].max() < 2.5e-3 and error.max() < 1 / 64 + 1e-4
    assert error.mean() < 5e-4
