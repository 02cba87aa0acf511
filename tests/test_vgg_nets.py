"""VGG19 and VGGFace2 resnet50_ft vs PyTorch mirrors (tests/vgg_torch.py) with random weights
through converters/vgg19.py and converters/vggface2.py; strict errors, round trips, the CLIs,
the booby-trapped pickle, preprocessing and the random-weights warning."""

import logging
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from converters import safe_load, torch_layout
from converters import vgg19 as vgg19_converter
from converters import vggface2 as vggface2_converter
from maskrenderer_jax.nets import VGGFace2, vgg19, vggface2
from tests import resnet_torch, vgg_torch
from tests.torch_utils import nchw, nhwc, random_images

ATOL = 1e-4


def flat(variables):
    return dict(torch_layout._flatten(variables))


# ------------------------------------------------------------------------------------ VGG19


@pytest.fixture(scope="module")
def vgg():
    net = vgg_torch.randomize_vgg_(vgg_torch.VGG19(), seed=0)
    return net, net.state_dict()


def vgg_parity(net, state, images):
    variables = vgg19_converter.import_state_dict(state)
    with torch.no_grad():
        expected = [nhwc(x) for x in vgg_torch.fomm_vgg19_features(net, nchw(images))]
    got = vgg19_converter.probe(variables, images)
    assert list(got) == list(vgg19.LAYERS)
    for (name, value), ref in zip(got.items(), expected, strict=True):
        assert value.shape == ref.shape and value.dtype == np.float32, name
        np.testing.assert_allclose(value, ref, atol=ATOL, rtol=0, err_msg=name)
        # Not vacuous: the random network keeps O(1) activations up to relu5_1.
        assert ref.std() > 0.1, name
    return got


def test_vgg19_matches_torch(vgg):
    # Odd, non-square: every floor of MaxPool2d(2, 2) is exercised (37 -> 18 -> 9 -> 4 -> 2).
    got = vgg_parity(*vgg, random_images(2, 37, 50, seed=0))
    assert [v.shape[1:] for v in got.values()] == [
        (37, 50, 64),
        (18, 25, 128),
        (9, 12, 256),
        (4, 6, 512),
        (2, 3, 512),
    ]


@pytest.mark.parametrize("size", [16, 32])
def test_vgg19_small_maps_match_torch(vgg, size):
    """Maps of <= 2x2 pixels take layers.Conv's patches @ kernel form (16 px: relu4_1's block,
    32 px: relu5_1's)."""
    got = vgg_parity(*vgg, random_images(2, size, size, seed=4))
    assert got["relu5_1"].shape[1:3] == (size // 16, size // 16)


@pytest.mark.slow
def test_vgg19_matches_torch_256(vgg):
    vgg_parity(*vgg, random_images(1, 256, 256, seed=1))


def test_vgg19_drops_only_the_listed_keys(vgg):
    _, state = vgg
    dropped = {k for k in state if k.startswith("classifier") or k in vgg19_converter.DROPPED_KEYS}
    assert dropped == set(vgg19_converter.DROPPED_KEYS)  # the real checkpoint's key set
    # A features-only state dict (torchvision's `vgg19().features` saved alone) imports too.
    kept = {k: v for k, v in state.items() if k not in dropped}
    a = flat(vgg19_converter.import_state_dict(state))
    b = flat(vgg19_converter.import_state_dict(kept))
    assert a.keys() == b.keys() and len(a) == 26  # 13 convs up to relu5_1
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key])


def test_vgg19_mismatches_are_all_listed(vgg):
    _, state = vgg
    state = dict(state)
    del state["features.28.bias"], state["features.0.weight"]
    state["features.29.weight"] = torch.zeros(3)  # a ReLU has no weights
    state["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    state["features.7.bias"] = state["features.7.bias"].double()
    with pytest.raises(torch_layout.ConversionError) as info:
        vgg19_converter.import_state_dict(state, source="vgg19.pth")
    message = str(info.value)
    assert "vgg19.pth does not fit the model" in message
    assert "2 missing:" in message and "1 unexpected:" in message and "2 mismatched" in message
    for key in ("features.28.bias", "features.0.weight", "features.29.weight"):
        assert f"    {key}\n" in message + "\n", key
    assert "features.5.weight: checkpoint (128, 32, 3, 3), model (128, 64, 3, 3)" in message
    assert "features.7.bias: dtype float64, model float32" in message
    assert "classifier" not in message and "features.30" not in message


def test_vgg19_not_a_state_dict():
    with pytest.raises(torch_layout.ConversionError, match="not a torchvision vgg19.*list"):
        vgg19_converter.import_state_dict([1, 2], source="x.pth")


def test_vgg19_round_trip_is_exact(vgg):
    _, state = vgg
    variables = vgg19_converter.import_state_dict(state)
    exported = vgg19_converter.export_state_dict(variables)
    kept = {k: v for k, v in state.items() if k not in vgg19_converter.DROPPED_KEYS}
    assert set(exported) == set(kept)
    for key, value in kept.items():
        np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
    again = flat(vgg19_converter.import_state_dict(exported))
    for key, value in flat(variables).items():
        np.testing.assert_array_equal(value, again[key], err_msg=str(key))


def test_vgg19_cli_import_probe_export(tmp_path, vgg, capsys):
    net, state = vgg
    torch.save(state, tmp_path / "vgg19-dcbb9e9d.pth")
    images = random_images(2, 37, 50, seed=0)  # the parity test's shape: compiled once
    np.savez(tmp_path / "images.npz", images=images)
    vgg19_converter.main(
        [
            "--checkpoint",
            str(tmp_path / "vgg19-dcbb9e9d.pth"),
            "--out",
            str(tmp_path / "vars"),
            "--probe",
            str(tmp_path / "images.npz"),
            "--probe-out",
            str(tmp_path / "o.npz"),
        ]
    )
    assert "relu5_1 (2, 2, 3, 512)" in capsys.readouterr().out
    with torch.no_grad():
        expected = [nhwc(x) for x in vgg_torch.fomm_vgg19_features(net, nchw(images))]
    with np.load(tmp_path / "o.npz") as got:
        assert got.files == list(vgg19.LAYERS)
        for name, ref in zip(vgg19.LAYERS, expected, strict=True):
            np.testing.assert_allclose(got[name], ref, atol=ATOL, rtol=0, err_msg=name)

    out = tmp_path / "exported.pth"
    vgg19_converter.main(["--variables", str(tmp_path / "vars"), "--export", str(out)])
    fresh = vgg_torch.VGG19()
    result = fresh.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(vgg19_converter.DROPPED_KEYS)
    for key, value in state.items():
        if key not in vgg19_converter.DROPPED_KEYS:
            torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_vgg19_probe_rejects_small_images(tmp_path):
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 8, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"at least 16x16.*\(1, 8, 64, 3\)"):
        vgg19_converter.read_probe_inputs(str(tmp_path / "in.npz"))


# --------------------------------------------------------------------------------- VGGFace2


@pytest.fixture(scope="module")
def face():
    net = resnet_torch.randomize_(vgg_torch.ResNet50ft(), seed=7)
    # randomize_ calibrates BatchNorm on inputs in [0, 1]; VGGFace2 inputs are 0-255 minus the
    # mean. Scaling conv1 keeps activations O(1), so atol 1e-4 stays a float32-meaningful bound.
    with torch.no_grad():
        net.conv1.weight.div_(255.0)
    weights = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    # The published pickle predates BatchNorm's num_batches_tracked.
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    return net, weights


def test_vggface2_trunk_matches_torch(face):
    net, weights = face
    variables = vggface2_converter.import_weights(weights)
    images = random_images(2, 66, 72, seed=2)  # a small stand-in for preprocessed 224 input
    got = jax.jit(lambda v, x: VGGFace2().apply(v, x))(variables, images)
    with torch.no_grad():
        expected = nhwc(net.stages(nchw(images))["layer4"]).mean(axis=(1, 2))
    assert got.shape == (2, vggface2.EMBEDDING_SIZE)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    assert np.std(expected) > 0.1


def test_vggface2_preprocess_is_the_reference_transform_at_256():
    images = random_images(2, 256, 256, seed=3)
    got = np.asarray(jax.jit(vggface2.preprocess)(images))
    expected = nhwc(vgg_torch.reference_transform(images))
    assert got.shape == (2, 224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # BGR order: channel 0 is blue.
    np.testing.assert_allclose(got[0, 0, 0, 0], images[0, 16, 16, 2] * 255 - 91.4953, atol=1e-4)


@pytest.mark.parametrize(
    "shape, crop, expected_region",
    [
        ((1, 512, 512, 3), True, (32, 480)),  # resize to 256, crop 16 -> 32 px of the 512 frame
        ((1, 300, 400, 3), True, None),  # non-square: shorter side -> 256 (256 x 341)
        ((1, 256, 256, 3), False, (0, 256)),  # the whole frame resized to 224
    ],
)
def test_vggface2_preprocess_other_sizes(shape, crop, expected_region):
    # A constant image stays constant through resize and crop: only the mean shifts it.
    images = np.full(shape, 0.5, np.float32)
    got = np.asarray(vggface2.preprocess(jnp.asarray(images), crop=crop))
    assert got.shape == (1, 224, 224, 3)
    expected = np.broadcast_to(127.5 - np.asarray(vggface2.MEAN_BGR, np.float32), got.shape)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    if expected_region is not None:  # a frame whose border is marked: what is kept?
        lo, hi = expected_region
        marked = np.zeros(shape, np.float32)
        marked[:, lo:hi, lo:hi] = 1.0
        out = np.asarray(vggface2.preprocess(jnp.asarray(marked), crop=crop))
        # Fully inside the kept region except for the resize's blur at the edge.
        assert np.mean(out[0, 2:-2, 2:-2, 0] > 255 * 0.99 - vggface2.MEAN_BGR[0]) > 0.99


def face_embeddings_reference(net, images):
    with torch.no_grad():
        pooled = net.avgpool(net.stages(vgg_torch.reference_transform(images))["layer4"])
    features = pooled.view(pooled.size(0), -1).numpy()  # extractor.py flattens [B, 2048, 1, 1]
    return features / np.linalg.norm(features, axis=1, keepdims=True), features


@pytest.mark.slow
def test_vggface2_embed_matches_torch_256(face):
    net, weights = face
    variables = vggface2_converter.import_weights(weights)
    images = random_images(2, 256, 256, seed=4)
    got = vggface2_converter.probe(variables, images)
    expected, features = face_embeddings_reference(net, images)
    np.testing.assert_allclose(got["features"], features, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["embeddings"], expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got["embeddings"], axis=1), 1.0, atol=1e-5)
    direct = jax.jit(vggface2.embed)(variables, images)
    np.testing.assert_allclose(direct, got["embeddings"], atol=1e-6, rtol=0)


def test_vggface2_mismatches_are_all_listed(face):
    _, weights = face
    weights = dict(weights)
    del weights["layer4.2.bn3.running_var"], weights["conv1.weight"]
    weights["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    weights["layer1.0.downsample.0.weight"] = np.zeros((256, 64, 3, 3), np.float32)
    with pytest.raises(torch_layout.ConversionError) as info:
        vggface2_converter.import_weights(weights, source="resnet50_ft_weight.pkl")
    message = str(info.value)
    assert "resnet50_ft_weight.pkl does not fit the model" in message
    assert "2 missing:" in message and "1 unexpected:" in message and "1 mismatched" in message
    for key in ("layer4.2.bn3.running_var", "conv1.weight", "layer5.0.conv1.weight"):
        assert f"    {key}\n" in message + "\n", key
    assert (
        "layer1.0.downsample.0.weight: checkpoint (256, 64, 3, 3), model (256, 64, 1, 1)" in message
    )
    assert "fc." not in message  # dropped explicitly


def test_vggface2_round_trip_is_exact(face):
    net, weights = face
    variables = vggface2_converter.import_weights(weights)
    exported = vggface2_converter.export_weights(variables)
    kept = {k: v for k, v in weights.items() if k not in vggface2_converter.DROPPED_KEYS}
    assert set(exported) == set(kept)
    for key, value in kept.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    again = flat(vggface2_converter.import_weights(exported))
    for key, value in flat(variables).items():
        np.testing.assert_array_equal(value, again[key], err_msg=str(key))


def test_vggface2_cli_import_probe_export(tmp_path, face, capsys):
    net, weights = face
    pkl = tmp_path / "resnet50_ft_weight.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(weights, f, protocol=2)  # as the Python 2 original, read with latin1
    images = random_images(1, 64, 64, seed=5)
    np.savez(tmp_path / "images.npz", images=images)
    vggface2_converter.main(
        [
            "--pickle",
            str(pkl),
            "--out",
            str(tmp_path / "vars"),
            "--probe",
            str(tmp_path / "images.npz"),
            "--probe-out",
            str(tmp_path / "o.npz"),
        ]
    )
    assert "wrote embeddings (1, 2048)" in capsys.readouterr().out
    # The torch reference of the same pipeline: resize 64 -> 256 (as preprocess does), then
    # the reference transform and network; the resize is shared, the rest is independent.
    resized = np.asarray(vggface2.preprocess(jnp.asarray(images)))  # [1, 224, 224, 3] BGR
    with torch.no_grad():
        pooled = net.avgpool(net.stages(nchw(resized))["layer4"]).view(1, -1).numpy()
    with np.load(tmp_path / "o.npz") as got:
        assert sorted(got.files) == ["embeddings", "features"]
        np.testing.assert_allclose(got["features"], pooled, atol=ATOL, rtol=0)
        np.testing.assert_allclose(
            got["embeddings"], pooled / np.linalg.norm(pooled), atol=ATOL, rtol=0
        )

    out = tmp_path / "exported.pkl"
    vggface2_converter.main(["--variables", str(tmp_path / "vars"), "--export", str(out)])
    exported = safe_load.load_pickle(out)
    # The reference's utils.load_state_dict into resnet50(include_top=False): every name known.
    fresh = vgg_torch.ResNet50ft(include_top=False)
    own = fresh.state_dict()
    assert set(exported) <= set(own)
    assert set(own) - set(exported) == {
        *vggface2_converter.DROPPED_KEYS,
        *(k for k in own if k.endswith("num_batches_tracked")),
    }
    for key, value in weights.items():
        if key not in vggface2_converter.DROPPED_KEYS:
            np.testing.assert_array_equal(exported[key], value, err_msg=key)


class _Trap:
    """Unpickling this calls builtins.open(path, 'w'): code run by merely loading the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_vggface2_booby_trapped_pickle_is_refused(tmp_path, face, capsys):
    _, weights = face
    marker = tmp_path / "pwned"
    pkl = tmp_path / "resnet50_ft_weight.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({**weights, "conv1.weight": _Trap(str(marker))}, f, protocol=2)
    with pytest.raises(
        safe_load.UntrustedFileError, match="refusing to load global (builtins|io).open"
    ):
        vggface2_converter.main(["--pickle", str(pkl), "--out", str(tmp_path / "vars")])
    assert not marker.exists()
    assert not (tmp_path / "vars").exists()


# ----------------------------------------------------------------------------- random init


@pytest.mark.parametrize("module", [vgg19, vggface2])
def test_random_init_fits_the_converter_and_warns(module, caplog):
    converter = {vgg19: vgg19_converter, vggface2: vggface2_converter}[module]
    variables = module.init_random(jax.random.key(0))
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), converter.abstract_variables())
    assert jax.tree.map(lambda x: (x.shape, x.dtype), variables) == shapes
    # Random, not zeros: the network computes something (just nothing meaningful).
    first_conv = "conv1" if module is vggface2 else "features_0"
    assert float(np.std(flat(variables)[("params", first_conv, "kernel")])) > 0
    with caplog.at_level(logging.WARNING):
        message = module.warn_random_weights()
    assert "RANDOM weights" in message and "meaningless" in message
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == message
