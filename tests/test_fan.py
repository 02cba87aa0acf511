"""face-alignment's FAN (nets/fan.py) vs the PyTorch mirror (tests/fan_torch.py) with random
weights and BatchNorm statistics through converters/fan.py; get_preds_fromhm's landmarks, the
crop and the image mapping vs transcriptions of face-alignment; strict errors, the round
trip, the CLI and the random-weights warning."""

import logging

import jax
import numpy as np
import pytest
import torch

from converters import fan as fan_converter
from converters import torch_layout
from maskrenderer_jax.nets import fan
from tests import fan_torch
from tests.torch_utils import nchw, nhwc, random_images

ATOL = 1e-4


def flat(variables):
    return dict(torch_layout._flatten(variables))


def reference_heatmaps(net, images):
    with torch.no_grad():
        return nhwc(net(nchw(images))[-1])


def reference_landmarks(heatmaps):
    """face-alignment's get_preds_fromhm on NHWC heatmaps, times 4 as its api: [B, 68, 2]."""
    preds, _ = fan_torch.get_preds_fromhm(np.ascontiguousarray(heatmaps.transpose(0, 3, 1, 2)))
    return preds * 4


def random_fan(num_modules, images, seed=0):
    net = fan_torch.randomize_(fan_torch.FAN(num_modules), seed, calibration_images=images)
    return net, net.state_dict(), reference_heatmaps(net, images)


@pytest.fixture(scope="module")
def fan2():
    """FAN(2) (every kind of key, al/bl included) on one 256x256 crop."""
    images = random_images(1, 256, 256, seed=0)
    return (images, *random_fan(2, images))


def check_parity(variables, images, expected):
    got = fan_converter.probe(variables, images)
    heatmaps, landmarks = got["heatmaps"], got["landmarks"]
    assert heatmaps.shape == (len(images), 64, 64, 68) and heatmaps.dtype == np.float32
    assert landmarks.shape == (len(images), 68, 2) and landmarks.dtype == np.float32
    error = float(np.max(np.abs(heatmaps - expected)))
    print(f"max |heatmaps - torch| = {error:.2e} (std {expected.std():.2f})")
    np.testing.assert_allclose(heatmaps, expected, atol=ATOL, rtol=0)
    assert expected.std() > 0.5  # not vacuous: O(1) heatmaps
    reference = reference_landmarks(expected)
    np.testing.assert_allclose(landmarks, reference, atol=ATOL, rtol=0)
    # Not vacuous: most points are refined (an unrefined cell centre is 4c + 2).
    assert np.mean((reference - 2) % 4 != 0) > 0.5


def test_fan_matches_torch(fan2):
    images, _, state, expected = fan2
    variables = fan_converter.import_state_dict(state, num_modules=2)
    check_parity(variables, images, expected)


@pytest.mark.slow  # FAN(4) at 256 px: 20-35 s on 2 shared cores (torch calibration, compile)
def test_fan4_matches_torch():
    images = random_images(1, 256, 256, seed=3)
    _, state, expected = random_fan(4, images, seed=3)
    assert len(state) == len(fan_torch.FAN(4).state_dict())  # the released key set
    check_parity(fan_converter.import_state_dict(state), images, expected)


# ------------------------------------------------------------------------------ landmarks


def test_landmarks_match_get_preds_fromhm():
    rng = np.random.default_rng(0)
    hm = rng.normal(size=(2, 64, 64, 68)).astype(np.float32)
    peaks = {  # channel -> (row, col) of a clear maximum: border and near-border cases
        0: (0, 30),
        1: (63, 30),
        2: (30, 0),
        3: (30, 63),
        4: (0, 0),
        5: (63, 63),
        6: (1, 1),
        7: (62, 62),
        8: (1, 62),
    }
    for k, (r, c) in peaks.items():
        hm[:, r, c, k] = 10.0
    hm[:, 20, 20, 9] = hm[:, 20, 21, 9] = 10.0  # tie: the first (row-major) maximum wins
    hm[:, 40, 40, 10] = 10.0  # equal neighbours on both axes: sign 0, no refinement
    hm[:, 40, 39, 10] = hm[:, 40, 41, 10] = hm[:, 39, 40, 10] = hm[:, 41, 40, 10] = 5.0
    got = np.asarray(jax.jit(fan.landmarks_from_heatmaps)(hm))
    expected = reference_landmarks(hm)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
    assert got[0, 9, 0] == 4 * 20 + 2 + 1  # column 20, not 21, then towards 21
    np.testing.assert_array_equal(got[0, 10], [4 * 40 + 2, 4 * 40 + 2])
    np.testing.assert_array_equal(got[0, 4], [2, 2])  # corner: no refinement


def gaussian_heatmap(centres, size=64, sigma=1.5):
    """[1, size, size, K] blobs at (x, y) heatmap-cell coordinates (cell centres at integers)."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    maps = [np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres]
    return np.stack(maps, axis=-1)[None].astype(np.float32)


def test_landmarks_known_answer():
    # Cell c is [4c, 4c + 4) in input pixels: a blob centred at cell coordinate u is at input
    # pixel 4u + 2. Argmax plus a quarter-cell step lands within a quarter cell (1 px) of it.
    centres = [(20.3, 40.8), (10.0, 10.0), (33.6, 5.45), (0.0, 5.3)]
    got = np.asarray(fan.landmarks_from_heatmaps(gaussian_heatmap(centres)))[0]
    truth = 4 * np.array(centres) + 2
    assert np.all(np.abs(got[:3] - truth[:3]) <= 1.0)
    np.testing.assert_array_equal(got[0], 4 * np.array([20.25, 40.75]) + 2)  # 20 + 1/4, 41 - 1/4
    np.testing.assert_array_equal(got[1], [42.0, 42.0])  # on a cell centre: no step
    # On the border (column 0) face-alignment refines neither axis: the cell centre (0, 5).
    np.testing.assert_array_equal(got[3], [2.0, 22.0])


# ------------------------------------------------------------------------------ converter


def test_mismatches_are_all_listed(fan2):
    state = dict(fan2[2])
    state["m0.b1_4.conv_1.weight"] = state.pop("m0.b1_4.conv1.weight")  # renamed
    state["l1.weight"] = torch.zeros(67, 256, 1, 1)  # wrong shape
    with pytest.raises(torch_layout.ConversionError) as info:
        fan_converter.import_state_dict(state, source="2DFAN4.pth", num_modules=2)
    message = str(info.value)
    assert "2DFAN4.pth does not fit the model" in message
    assert "1 missing:" in message and "1 unexpected:" in message and "1 mismatched" in message
    assert "    m0.b1_4.conv1.weight\n" in message
    assert "    m0.b1_4.conv_1.weight\n" in message
    assert "l1.weight: checkpoint (67, 256, 1, 1), model (68, 256, 1, 1)" in message


def test_other_num_modules_is_an_error(fan2):
    with pytest.raises(torch_layout.ConversionError) as info:
        fan_converter.import_state_dict(fan2[2], num_modules=1)
    message = str(info.value)
    assert "unexpected" in message and "missing" not in message
    for key in ("m1.b1_4.bn1.weight", "l1.bias", "bl0.weight", "al0.bias"):
        assert f"    {key}\n" in message, key


def test_nested_state_dict_and_not_a_state_dict(fan2):
    state = fan2[2]
    a = flat(fan_converter.import_state_dict(state, num_modules=2))
    b = flat(fan_converter.import_state_dict({"state_dict": state, "epoch": 3}, num_modules=2))
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key])
    with pytest.raises(torch_layout.ConversionError, match="not a face-alignment FAN.*list"):
        fan_converter.import_state_dict([1, 2], source="x.pth")


def test_round_trip_is_exact(fan2):
    state = fan2[2]
    variables = fan_converter.import_state_dict(state, num_modules=2)
    exported = fan_converter.export_state_dict(variables)
    assert set(exported) == set(state)  # num_batches_tracked included
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
    again = flat(fan_converter.import_state_dict(exported, num_modules=2))
    for key, value in flat(variables).items():
        np.testing.assert_array_equal(value, again[key], err_msg=str(key))


def test_cli_import_probe_export(tmp_path, fan2, capsys):
    images, net, state, expected = fan2
    checkpoint = tmp_path / "2DFAN2.pth.tar"
    torch.save({"state_dict": state, "epoch": 1}, checkpoint)
    np.savez(tmp_path / "images.npz", images=images)
    fan_converter.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--num-modules",
            "2",
            "--out",
            str(tmp_path / "vars"),
            "--probe",
            str(tmp_path / "images.npz"),
            "--probe-out",
            str(tmp_path / "o.npz"),
        ]
    )
    assert "heatmaps (1, 64, 64, 68), landmarks (1, 68, 2)" in capsys.readouterr().out
    with np.load(tmp_path / "o.npz") as got:
        assert sorted(got.files) == ["heatmaps", "landmarks"]
        np.testing.assert_allclose(got["heatmaps"], expected, atol=ATOL, rtol=0)
        np.testing.assert_allclose(got["landmarks"], reference_landmarks(expected), atol=ATOL)

    out = tmp_path / "exported.pth"
    fan_converter.main(["--variables", str(tmp_path / "vars"), "--export", str(out)])
    fresh = fan_torch.FAN(2)
    fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):  # exported as 0: FAN's BN is frozen
            torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_probe_rejects_other_sizes(tmp_path):
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 128, 128, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[B, 256, 256, 3\].*\(1, 128, 128, 3\)"):
        fan_converter.read_probe_inputs(str(tmp_path / "in.npz"))


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "2DFAN4-cd938726ad.zip"
    torch.jit.script(torch.nn.Conv2d(3, 4, 1)).save(str(path))
    with pytest.raises(torch_layout.ConversionError, match="TorchScript.*torch.jit.load"):
        fan_converter.load_checkpoint(str(path))


# ---------------------------------------------------------------------- crop and mapping


@pytest.mark.parametrize(
    "box",
    [
        (120.3, 80.7, 260.2, 230.9, 0.99),  # inside the frame
        (300.5, -30.2, 470.0, 150.4, 0.9),  # over the top and right edges: zero padding
    ],
)
def test_crop_and_image_coords_match_face_alignment(box):
    pytest.importorskip("cv2")  # the reference resizes with OpenCV (an evaluation extra)
    rng = np.random.default_rng(1)
    # A smooth frame (uint8, as face-alignment reads it): its resize is well conditioned.
    y, x = np.mgrid[:300, :400]
    image = np.stack([x * 0.6, y * 0.8, (x + y) * 0.35], -1) + rng.uniform(0, 20, (300, 400, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)

    crop, transform = fan.crop_for_fan(image, box)
    center, scale = fan_torch.center_scale(box)
    np.testing.assert_allclose(transform.center, center)
    assert transform.scale == pytest.approx(scale)
    reference = fan_torch.crop(image, center, scale)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.float32
    # cv2's fixed-point uint8 arithmetic vs one float64 rounding: at most one grey level
    # (in ~4-12% of the values here), and the same geometry (a shift would cost far more).
    np.testing.assert_allclose(crop * 255, reference, atol=1.0 + 1e-4, rtol=0)
    assert np.mean(np.abs(crop * 255 - reference)) < 0.2
    float_crop, _ = fan.crop_for_fan(image / 255.0, box)
    np.testing.assert_array_equal(float_crop, crop)

    heatmaps = rng.normal(size=(1, 64, 64, 68)).astype(np.float32)
    points = np.asarray(fan.landmarks_from_heatmaps(heatmaps))[0]
    _, expected = fan_torch.get_preds_fromhm(
        np.ascontiguousarray(heatmaps.transpose(0, 3, 1, 2)), center, scale
    )
    got = fan.to_image_coords(points, transform)
    np.testing.assert_array_equal(got, expected[0])
    exact = fan.to_image_coords(points, transform, truncate=False)
    np.testing.assert_array_equal(np.trunc(exact), got)
    # The crop's centre maps to the face centre: 128 crop px = 32 cells = centre.
    centre = fan.to_image_coords(np.array([128.0, 128.0]), transform, truncate=False)
    np.testing.assert_allclose(centre, center, atol=1e-4)


# ----------------------------------------------------------------------------- random init


def test_random_init_fits_the_converter_and_warns(caplog):
    variables = fan.init_random(jax.random.key(0), num_modules=2)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), fan_converter.abstract_variables(2))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), variables) == shapes
    assert fan.num_modules_of(variables) == 2
    leaves = flat(variables)
    # flax's defaults: lecun_normal kernels (std 1/sqrt(fan_in)), BN identity statistics.
    for name, fan_in in (("conv1", 7 * 7 * 3), ("l1", 256)):
        std = float(np.std(leaves[("params", name, "kernel")]))
        assert std == pytest.approx(fan_in**-0.5, rel=0.1), name
    np.testing.assert_array_equal(leaves[("params", "bn_end0", "scale")], 1.0)
    np.testing.assert_array_equal(leaves[("batch_stats", "m1", "b3_2", "bn1", "var")], 1.0)
    np.testing.assert_array_equal(leaves[("params", "l0", "bias")], 0.0)
    with caplog.at_level(logging.WARNING):
        message = fan.warn_random_weights()
    assert "RANDOM weights" in message and "meaningless" in message
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == message
