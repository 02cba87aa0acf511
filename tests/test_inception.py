"""FID InceptionV3 (nets/inception.py) vs the PyTorch mirror (tests/inception_torch.py) and
pytorch-fid's own code, with random weights through converters/inception.py: pool3 end to end,
each kind of Inception block, the resize, strict errors, the round trip, the CLI and random
init."""

import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters import inception as converter
from converters import torch_layout
from maskrenderer_jax.nets import inception
from tests import inception_torch
from tests.torch_utils import nchw, nhwc, random_images

ATOL = 1e-4
ODD = (2, 64, 80)  # batch, height, width: upsampled to 299 with different row/column weights


def flat(variables):
    return dict(torch_layout._flatten(variables))


@pytest.fixture(scope="module")
def fid():
    """(torch mirror, its state dict, converted variables), random weights and BN statistics."""
    torch.set_num_threads(2)
    net = inception_torch.fid_inception_v3()
    # BN statistics from both kinds of test input: smooth upsampled frames and 299 px noise.
    small = nchw(random_images(*ODD, seed=100))
    small = F.interpolate(small, size=(299, 299), mode="bilinear", align_corners=False)
    calibration = torch.cat([small, nchw(random_images(2, 299, 299, seed=101))])
    inception_torch.randomize_(net, seed=0, calibration=calibration)
    state = net.state_dict()
    return net, state, converter.import_state_dict(state)


def torch_pool3(net, images):
    with torch.no_grad():
        return inception_torch.pool3(net, nchw(images)).numpy()


@pytest.mark.parametrize("shape", [ODD, (1, 299, 299)], ids=["2x64x80", "1x299x299"])
def test_pool3_matches_torch(fid, shape):
    net, _, variables = fid
    images = random_images(*shape, seed=1)
    got = converter.probe(variables, images)["pool3"]
    expected = torch_pool3(net, images)
    assert got.shape == (shape[0], inception.FEATURES) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # Not vacuous: O(1) features that differ between images.
    assert expected.std() > 0.1
    if shape[0] > 1:
        assert np.abs(expected[0] - expected[1]).mean() > 0.05


# name -> (Flax block, input channels); inputs of an odd size, so the border cells that the FID
# pools exclude are a large part of the map.
BLOCKS = {
    "Mixed_5b": (inception.InceptionA(pool_features=32), 192),
    "Mixed_6a": (inception.InceptionB(), 288),
    "Mixed_6e": (inception.InceptionC(channels_7x7=192), 768),
    "Mixed_7a": (inception.InceptionD(), 768),
    "Mixed_7b": (inception.InceptionE(pool="avg"), 1280),
    "Mixed_7c": (inception.InceptionE(pool="max"), 2048),
}


PLAIN = {
    "Mixed_5b": (inception_torch.InceptionA, (192, 32)),
    "Mixed_6e": (inception_torch.InceptionC, (768, 192)),
    "Mixed_7b": (inception_torch.InceptionE, (1280,)),
    "Mixed_7c": (inception_torch.FIDInceptionE_1, (2048,)),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_matches_torch(fid, name):
    net, _, variables = fid
    block, channels = BLOCKS[name]
    x = 2.0 * np.random.default_rng(3).uniform(size=(2, 7, 9, channels)).astype(np.float32)
    sub = {collection: variables[collection][name] for collection in variables}
    got = np.asarray(jax.jit(block.apply)(sub, x))
    reference = getattr(net, name)
    with torch.no_grad():
        expected = nhwc(reference(nchw(x)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0, err_msg=name)
    assert expected.std() > 0.1
    # The FID patch matters on these inputs: torchvision's block (padding counted in the
    # average; an average instead of Mixed_7c's max) gives other values.
    if name in PLAIN:
        cls, args = PLAIN[name]
        plain = cls(*args)
        plain.load_state_dict(reference.state_dict())
        with torch.no_grad():
            assert np.abs(nhwc(plain.eval()(nchw(x))) - expected).max() > 1e-2


@pytest.mark.parametrize("size", [(64, 80), (37, 400), (299, 120), (600, 299)])
def test_preprocess_is_pytorch_fids_resize(size):
    images = random_images(1, *size, seed=4)
    got = np.asarray(jax.jit(inception.preprocess)(images))
    resized = F.interpolate(nchw(images), size=(299, 299), mode="bilinear", align_corners=False)
    assert got.shape == (1, 299, 299, 3) and got.dtype == np.float32
    # float32 rounding only: the resize weights are torch's own (see _torch_bilinear_weights).
    np.testing.assert_allclose(got, nhwc(2 * resized - 1), atol=1e-6, rtol=0)


def test_mirror_is_pytorch_fid(fid, monkeypatch):
    """pytorch-fid's real InceptionV3([3]) on a stand-in torchvision (built from the mirror's
    torchvision blocks) loads the state dict strictly and gives the mirror's and our pool3."""
    net, state, variables = fid
    before = {name for name in sys.modules if name.split(".")[0] == "torchvision"}
    images = random_images(*ODD, seed=1)  # test_pool3_matches_torch's: compiled once
    with inception_torch.standin_torchvision() as fid_module:
        requested = []

        def load_state_dict_from_url(url, progress=True):
            requested.append(url)
            return {k: v.clone() for k, v in state.items()}

        monkeypatch.setattr(fid_module, "load_state_dict_from_url", load_state_dict_from_url)
        model = fid_module.InceptionV3([fid_module.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
        # Its `fid_inception_v3()` strict load_state_dict accepted the mirror's keys: they are
        # the checkpoint's (fc included, as DROPPED_KEYS says).
        assert requested == [fid_module.FID_WEIGHTS_URL]
        assert requested[0].endswith("pt_inception-2015-12-05-6726825d.pth")
        assert set(fid_module.fid_inception_v3().state_dict()) == set(state)
        with torch.no_grad():
            (real,) = model(nchw(images))
    assert {n for n in sys.modules if n.split(".")[0] == "torchvision"} == before
    real = real.numpy()
    assert real.shape == (2, 2048, 1, 1)
    np.testing.assert_allclose(real[:, :, 0, 0], torch_pool3(net, images), atol=1e-6, rtol=0)
    got = np.asarray(inception.features(variables, images))
    np.testing.assert_allclose(got, real[:, :, 0, 0], atol=ATOL, rtol=0)


def test_drops_only_fc(fid):
    _, state, variables = fid
    assert {k for k in state if not k.startswith(("Conv2d_", "Mixed_"))} == set(
        converter.DROPPED_KEYS
    )
    kept = {k: v for k, v in state.items() if k not in converter.DROPPED_KEYS}
    without_fc = flat(converter.import_state_dict(kept))
    with_fc = flat(variables)
    assert without_fc.keys() == with_fc.keys()
    assert len(with_fc) == 94 * 5  # 94 BasicConv2d: kernel, BN scale/bias/mean/var
    for key, value in with_fc.items():
        np.testing.assert_array_equal(value, without_fc[key])


def test_mismatches_are_all_listed(fid):
    _, state, _ = fid
    state = dict(state)
    state["Mixed_6b.branch7x7_2.convv.weight"] = state.pop("Mixed_6b.branch7x7_2.conv.weight")
    del state["Mixed_7c.branch_pool.bn.running_var"]
    # 1x7 and 7x1 kernels swapped: a transposition the key names cannot catch.
    state["Mixed_6c.branch7x7_3.conv.weight"] = torch.zeros(192, 160, 1, 7)
    state["Conv2d_1a_3x3.bn.bias"] = state["Conv2d_1a_3x3.bn.bias"].double()
    with pytest.raises(torch_layout.ConversionError) as info:
        converter.import_state_dict(state, source="pt_inception.pth")
    message = str(info.value)
    assert "pt_inception.pth does not fit the model" in message
    assert "2 missing:" in message and "1 unexpected:" in message and "2 mismatched" in message
    for key in (
        "Mixed_6b.branch7x7_2.conv.weight",
        "Mixed_7c.branch_pool.bn.running_var",
        "Mixed_6b.branch7x7_2.convv.weight",
    ):
        assert f"    {key}\n" in message + "\n", key
    assert (
        "Mixed_6c.branch7x7_3.conv.weight: checkpoint (192, 160, 1, 7), model (192, 160, 7, 1)"
        in message
    )
    assert "Conv2d_1a_3x3.bn.bias: dtype float64, model float32" in message
    assert "fc." not in message


def test_not_a_state_dict():
    with pytest.raises(torch_layout.ConversionError, match="not a pytorch-fid Inception.*list"):
        converter.import_state_dict([1, 2], source="x.pth")


def test_round_trip_is_exact(fid):
    _, state, variables = fid
    exported = converter.export_state_dict(variables)
    kept = {k: v for k, v in state.items() if k not in converter.DROPPED_KEYS}
    assert set(exported) == set(kept)  # num_batches_tracked included
    for key, value in kept.items():
        np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
    again = flat(converter.import_state_dict(exported))
    for key, value in flat(variables).items():
        np.testing.assert_array_equal(value, again[key], err_msg=str(key))


def test_cli_import_probe_export(tmp_path, fid, capsys):
    net, state, _ = fid
    checkpoint = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, checkpoint)
    images = random_images(*ODD, seed=1)  # the parity test's batch: compiled once
    np.savez(tmp_path / "images.npz", images=images)
    converter.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "vars"),
            "--probe",
            str(tmp_path / "images.npz"),
            "--probe-out",
            str(tmp_path / "o.npz"),
        ]
    )
    assert "wrote pool3 (2, 2048)" in capsys.readouterr().out
    with np.load(tmp_path / "o.npz") as got:
        assert got.files == ["pool3"]
        np.testing.assert_allclose(got["pool3"], torch_pool3(net, images), atol=ATOL, rtol=0)

    out = tmp_path / "exported.pth"
    converter.main(["--variables", str(tmp_path / "vars"), "--export", str(out)])
    fresh = inception_torch.fid_inception_v3()
    result = fresh.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(converter.DROPPED_KEYS)
    for key, value in state.items():
        if key not in converter.DROPPED_KEYS:
            torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_probe_rejects_non_images(tmp_path):
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"images must be \[B, H, W, 3\].*\(1, 64, 64\)"):
        converter.read_probe_inputs(str(tmp_path / "in.npz"))


def test_random_init_fits_the_converter_and_warns(caplog):
    variables = inception.init_random(jax.random.key(0))
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), converter.abstract_variables())
    assert jax.tree.map(lambda x: (x.shape, x.dtype), variables) == shapes
    leaves = flat(variables)
    # flax nn.Conv's LeCun normal: std sqrt(1 / fan_in); BatchNorm starts as the identity.
    for module, fan_in in (("Conv2d_1a_3x3", 27), ("Mixed_7c", 2048)):
        path = ("params", module, "conv", "kernel")
        if module == "Mixed_7c":
            path = ("params", module, "branch_pool", "conv", "kernel")
        std = float(np.std(leaves[path]))
        assert abs(std * np.sqrt(fan_in) - 1.0) < 0.15, (module, std)
    bn = ("Mixed_5b", "branch1x1", "bn")
    assert np.all(np.asarray(leaves[("batch_stats", *bn, "var")]) == 1.0)
    assert np.all(np.asarray(leaves[("params", *bn, "bias")]) == 0.0)
    with caplog.at_level(logging.WARNING):
        message = inception.warn_random_weights()
    assert "RANDOM weights" in message and "meaningless" in message
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == message


def test_features_is_traceable_in_a_callers_jit(fid):
    _, _, variables = fid
    images = jnp.asarray(random_images(*ODD, seed=1))
    direct = inception.features(variables, images)
    nested = jax.jit(lambda v, x: inception.features(v, x) * 1.0)(variables, images)
    np.testing.assert_allclose(nested, direct, atol=1e-6, rtol=0)
