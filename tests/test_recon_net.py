"""Deep3DFace's regressor and the ResNet-50s vs PyTorch mirrors (tests/resnet_torch.py) with
random weights through converters/deep3dface.py; strict errors, round trip, the CLI, and the
preprocessing (FOMM-crop resize, Deep3DFace's 5-landmark alignment)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from converters import deep3dface, safe_load, torch_layout
from maskrenderer_jax.face3d import recon_net
from maskrenderer_jax.nets import ResNet50
from tests import resnet_torch
from tests.torch_utils import nchw, nhwc, random_images

ATOL = 1e-4


@pytest.fixture(scope="module")
def deep3d():
    net = resnet_torch.randomize_(resnet_torch.ReconNetWrapper(), seed=3)
    # The real epoch_20.pth also carries the optimizer and scheduler states.
    checkpoint = {"net_recon": net.state_dict(), "optimizer": {"state": {}}, "epoch": 20}
    return net, checkpoint


def run_parity(net, checkpoint, images):
    variables = deep3dface.import_checkpoint(checkpoint)
    with torch.no_grad():
        expected = net(nchw(images)).numpy()
    got = deep3dface.probe(variables, images)["coeffs"]
    assert got.shape == (images.shape[0], 257) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # Meaningful only if the random network is not degenerate (heads are random, not zero).
    assert np.std(expected) > 0.1
    assert np.std(expected[0] - expected[1]) > 0.01  # the coefficients depend on the image


def test_recon_net_matches_torch(deep3d):
    # Odd, non-square size: every conv/pool rounding of torch is exercised on both axes.
    run_parity(*deep3d, random_images(2, 65, 71, seed=0))


@pytest.mark.slow
def test_recon_net_matches_torch_224(deep3d):
    run_parity(*deep3d, random_images(2, 224, 224, seed=1))


def resnet_variables(net, caffe):
    abstract = jax.eval_shape(
        lambda x: ResNet50(caffe=caffe).init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )
    state = safe_load.to_numpy(net.state_dict(), "mirror")
    return torch_layout.from_torch(state, abstract, source="mirror")


@pytest.fixture(scope="module")
def caffe_resnet():
    net = resnet_torch.randomize_(resnet_torch.ResNet(caffe=True), seed=4)
    return net, resnet_variables(net, caffe=True)


def test_caffe_resnet_matches_torch(caffe_resnet):
    net, variables = caffe_resnet
    # 66 x 72 -> stem 33 x 36 -> ceil-mode max pool 16 x 18 (floor would give 16 x 17).
    images = random_images(2, 66, 72, seed=2)
    got = jax.jit(lambda v, x: ResNet50(caffe=True).apply(v, x, train=False, return_stages=True))(
        variables, images
    )
    with torch.no_grad():
        expected = {k: nhwc(v) for k, v in net.stages(nchw(images)).items()}
    assert expected["stem"].shape[1:3] == (16, 18)
    assert expected["layer4"].shape[1:3] == (2, 3)
    expected["pooled"] = expected["layer4"].mean(axis=(1, 2))
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=ATOL, rtol=0, err_msg=key)
    assert np.std(expected["pooled"]) > 0.1


@pytest.mark.slow
def test_caffe_resnet_matches_torch_224(caffe_resnet):
    net, variables = caffe_resnet
    images = random_images(1, 224, 224, seed=3)
    got = jax.jit(lambda v, x: ResNet50(caffe=True).apply(v, x, train=False))(variables, images)
    with torch.no_grad():
        expected = net(nchw(images)).numpy()[:, :, 0, 0]  # VGGFace2's AvgPool2d(7) on 7x7
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_train_mode_batchnorm_matches_torch():
    net = resnet_torch.randomize_(resnet_torch.ResNet(), seed=5)
    variables = resnet_variables(net, caffe=False)
    images = random_images(3, 48, 40, seed=4)
    got, updates = jax.jit(
        lambda v, x: ResNet50().apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, images)
    net.train()
    with torch.no_grad():
        expected = net(nchw(images)).numpy()[:, :, 0, 0]
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # Running means follow torch's momentum 0.1 (variances differ by torch's n/(n-1)).
    np.testing.assert_allclose(
        updates["batch_stats"]["layer1_0"]["bn1"]["mean"],
        net.layer1[0].bn1.running_mean.numpy(),
        atol=ATOL,
    )


def test_round_trip_is_exact(deep3d):
    _, checkpoint = deep3d
    variables = deep3dface.import_checkpoint(checkpoint)
    exported = deep3dface.export_checkpoint(variables)
    original = checkpoint["net_recon"]
    assert set(exported) == {"net_recon"}
    assert set(exported["net_recon"]) == set(original)
    assert "backbone.layer1.0.downsample.0.weight" in original
    assert "final_layers.6.bias" in original
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):  # a counter nothing reads; exported as 0
            np.testing.assert_array_equal(exported["net_recon"][key], value.numpy(), err_msg=key)
    again = deep3dface.import_checkpoint(exported)
    flat, flat_again = dict(torch_layout._flatten(variables)), dict(torch_layout._flatten(again))
    assert flat.keys() == flat_again.keys()
    for key, value in flat.items():
        np.testing.assert_array_equal(value, flat_again[key], err_msg=str(key))


def test_mismatches_are_all_listed(deep3d):
    _, checkpoint = deep3d
    state = dict(checkpoint["net_recon"])
    del state["final_layers.6.weight"], state["backbone.layer4.2.bn3.running_var"]
    # A use_last_fc=True network carries the classifier instead of the heads.
    state["backbone.fc.weight"] = torch.zeros(257, 2048)
    state["backbone.fc.bias"] = torch.zeros(257)
    state["final_layers.0.weight"] = torch.zeros(81, 2048, 1, 1)
    with pytest.raises(torch_layout.ConversionError) as info:
        deep3dface.import_checkpoint({"net_recon": state}, source="e20.pth")
    message = str(info.value)
    assert "e20.pth['net_recon'] does not fit the model" in message
    assert "2 missing:" in message and "2 unexpected:" in message and "1 mismatched" in message
    for key in (
        "final_layers.6.weight",
        "backbone.layer4.2.bn3.running_var",
        "backbone.fc.weight",
        "backbone.fc.bias",
    ):
        assert f"    {key}" in message, key
    assert "final_layers.0.weight: checkpoint (81, 2048, 1, 1), model (80, 2048, 1, 1)" in message


@pytest.mark.parametrize(
    "bad, found",
    [
        ({"state_dict": {}, "epoch": 20}, "found ['epoch', 'state_dict']"),
        ({"backbone.conv1.weight": torch.zeros(1)}, "found ['backbone.conv1.weight']"),
        ([1, 2], "found list"),
    ],
)
def test_not_a_deep3dface_checkpoint_names_what_was_found(bad, found):
    with pytest.raises(torch_layout.ConversionError, match="not a Deep3DFace checkpoint") as info:
        deep3dface.import_checkpoint(bad, source="x.pth")
    assert found in str(info.value)


def test_cli_import_probe_export(tmp_path, deep3d, capsys):
    net, checkpoint = deep3d
    ckpt = tmp_path / "epoch_20.pth"
    torch.save(checkpoint, ckpt)
    images = random_images(2, 65, 71, seed=0)  # the parity test's shape: compiled once
    np.savez(tmp_path / "images.npz", images=images)
    deep3dface.main(
        [
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "vars"),
            "--probe",
            str(tmp_path / "images.npz"),
            "--probe-out",
            str(tmp_path / "o.npz"),
        ]
    )
    assert "wrote coeffs (2, 257)" in capsys.readouterr().out
    with torch.no_grad():
        expected = net(nchw(images)).numpy()
    with np.load(tmp_path / "o.npz") as got:
        assert got.files == ["coeffs"]
        np.testing.assert_allclose(got["coeffs"], expected, atol=ATOL, rtol=0)

    # Export from the saved variables loads strictly into the PyTorch module.
    out = tmp_path / "exported.pth"
    deep3dface.main(["--variables", str(tmp_path / "vars"), "--export", str(out)])
    exported = torch.load(out, weights_only=True)
    fresh = resnet_torch.ReconNetWrapper()
    fresh.load_state_dict(exported["net_recon"], strict=True)
    for key, value in checkpoint["net_recon"].items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"source": np.zeros((1, 64, 64, 3), np.float32)}, r"missing array 'images'"),
        ({"images": np.zeros((64, 64, 3), np.float32)}, r"\[B, H, W, 3\].*\(64, 64, 3\)"),
        ({"images": np.zeros((1, 16, 16, 3), np.float32)}, r"at least 32x32.*\(1, 16, 16, 3\)"),
    ],
)
def test_probe_rejects_bad_inputs(tmp_path, arrays, match):
    np.savez(tmp_path / "in.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        deep3dface.read_probe_inputs(str(tmp_path / "in.npz"))


def test_heads_are_zero_initialised_in_reference_order():
    model = recon_net.ReconNet()

    # Only the heads are returned, so XLA drops the backbone's 25M random numbers.
    @jax.jit
    def init_heads():
        params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
        return {k: v for k, v in params.items() if k.startswith("final_layers")}

    heads = init_heads()
    assert len(heads) == 7
    for i, n in enumerate((80, 64, 80, 3, 27, 2, 1)):  # id, exp, tex, angle, gamma, txy, tz
        assert heads[f"final_layers_{i}"]["kernel"].shape == (1, 1, 2048, n)
        np.testing.assert_array_equal(heads[f"final_layers_{i}"]["kernel"], 0)
        np.testing.assert_array_equal(heads[f"final_layers_{i}"]["bias"], np.zeros(n))


def test_fomm_crop_resize_keeps_the_frame():
    def smooth(size):  # 4 periods over the frame, sampled at pixel centres
        c = 2 * np.pi * 4 * (np.arange(size) + 0.5) / size
        f = 0.5 + 0.4 * np.sin(c)[None, :] * np.cos(c)[:, None]
        return np.stack([f, 1 - f, np.full_like(f, 0.25)], axis=-1).astype(np.float32)

    images = np.stack([smooth(256), smooth(256)[::-1]])
    out = np.asarray(recon_net.preprocess_fomm_crop(jnp.asarray(images)))
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    # Same continuous frame, no half-pixel shift (which would be ~0.02 here).
    np.testing.assert_allclose(out[0], smooth(224), atol=5e-3)
    np.testing.assert_allclose(out[1], smooth(224)[::-1], atol=5e-3)


def standard_face_landmarks(height, scale, centre):
    """Pixel landmarks (x right, y down) of the standard face seen frontally at `scale`."""
    up = scale * recon_net.STANDARD_LANDMARKS_3D[:, :2].astype(np.float64) + centre
    return np.stack([up[:, 0], height - 1 - up[:, 1]], axis=1)


def blob_image(height, width, points, sigma=3.0):
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.full((height, width, 3), 0.2, np.float32)
    for x, y in points:
        out[..., 0] += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.clip(out, 0, 1)


def keys_cubic(x):
    x, a = np.abs(x), -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def pil_resize_then_crop(image, w, h, left, up, size):
    """PIL's `img.resize((w, h), BICUBIC).crop((left, up, left+size, up+size))` in float."""

    def weights(n_in, n_out):
        scale = n_in / n_out
        support = 2.0 * max(scale, 1.0)
        mat = np.zeros((n_out, n_in))
        for i in range(n_out):
            centre = (i + 0.5) * scale
            lo = max(int(centre - support + 0.5), 0)
            hi = min(int(centre + support + 0.5), n_in)
            k = keys_cubic((np.arange(lo, hi) - centre + 0.5) / max(scale, 1.0))
            mat[i, lo:hi] = k / k.sum()
        return mat

    h0, w0 = image.shape[:2]
    resized = np.einsum("yh,xw,hwc->yxc", weights(h0, h), weights(w0, w), image, optimize=True)
    padded = np.zeros((h + 2 * size, w + 2 * size, 3))
    padded[size : size + h, size : size + w] = resized
    return padded[size + up : 2 * size + up, size + left : 2 * size + left]


@pytest.mark.parametrize("centre", [(150.0, 120.0), (70.0, 200.0)])  # inside; over the corner
def test_alignment_maps_the_standard_face_to_its_template_position(centre):
    h0, w0, scale = 260, 300, 200.0
    landmarks = standard_face_landmarks(h0, scale, np.array(centre))
    image = blob_image(h0, w0, landmarks)
    aligned = recon_net.align_five_landmarks(image, landmarks)

    # POS recovers the affine camera exactly; Deep3DFace's s = 102 / scale.
    np.testing.assert_allclose(aligned.trans_params, [w0, h0, 102 / scale, *centre], rtol=1e-9)
    # The template lands at 112 + 102 (X, Y) (y up), up to the int() of the resized size.
    template = recon_net.STANDARD_LANDMARKS_3D[:, :2]
    expected = np.stack([112 + 102 * template[:, 0], 223 - (112 + 102 * template[:, 1])], 1)
    np.testing.assert_allclose(aligned.landmarks, expected, atol=0.5)

    # The image follows Deep3DFace's integer crop of a PIL bicubic resize.
    s = aligned.trans_params[2]
    w, h = int(np.int32(w0 * s)), int(np.int32(h0 * s))
    left = int(np.int32(w / 2 - 112 + (centre[0] - w0 / 2) * s))
    up = int(np.int32(h / 2 - 112 + (h0 / 2 - centre[1]) * s))
    reference = pil_resize_then_crop(image, w, h, left, up, 224)
    assert aligned.image.shape == (224, 224, 3) and aligned.image.dtype == np.float32
    np.testing.assert_allclose(aligned.image, np.clip(reference, 0, 1), atol=1e-5)
    # Each blob sits within the reference's sub-pixel conventions of its landmark.
    red = aligned.image[..., 0] - 0.2
    yy, xx = np.mgrid[0:224, 0:224]
    for x, y in aligned.landmarks:
        window = (np.abs(xx - x) < 7) & (np.abs(yy - y) < 7) & (red > 0)
        weight = red * window
        centroid = np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()
        np.testing.assert_allclose(centroid, [x, y], atol=1.5)
    if centre[0] < 100:  # the crop hangs over the left and top edges: PIL's crop reads zeros
        assert left < 0 and up < 0
        assert np.all(aligned.image[: -up - 1, : -left - 1] == 0)
        assert np.all(aligned.image[-up + 2 :, -left + 2 :][:50, :50, 1] > 0.15)


def test_alignment_from_68_landmarks_uses_deep3dfaces_five():
    h0, w0 = 260, 300
    five = standard_face_landmarks(h0, 180.0, np.array([140.0, 130.0]))
    rng = np.random.default_rng(0)
    lm68 = rng.uniform(50, 250, (68, 2))
    offset = np.array([6.0, 1.0])
    lm68[[36, 39]] = five[0] - offset, five[0] + offset  # eye corners average to the eye
    lm68[[42, 45]] = five[1] - offset, five[1] + offset
    lm68[30], lm68[48], lm68[54] = five[2], five[3], five[4]  # nose tip, mouth corners
    np.testing.assert_allclose(recon_net.five_point_landmarks(lm68), five)
    image = blob_image(h0, w0, five)
    from_five = recon_net.align_five_landmarks(image, five)
    from_68 = recon_net.align_five_landmarks(image, lm68)
    np.testing.assert_allclose(from_68.trans_params, from_five.trans_params, rtol=1e-9)
    np.testing.assert_array_equal(from_68.image, from_five.image)
    assert from_68.landmarks.shape == (68, 2)
    np.testing.assert_allclose(from_68.landmarks[[30, 48, 54]], from_five.landmarks[2:], atol=1e-4)
