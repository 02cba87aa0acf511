"""Layer-level behaviour against torch: warp (grid_sample), resizing, anti-alias, pools,
the small-map conv, CBAM."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters.maskrenderer_torch import layers as torch_layers
from maskrenderer_jax.models import layers
from tests import torch_utils


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 16, 16, 5)])
def test_warp_matches_grid_sample_align_corners(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    # Sampling points inside, on the border and outside [-1, 1] (zero padding).
    grid = rng.uniform(-1.3, 1.3, size=(shape[0], 11, 13, 2)).astype(np.float32)
    grid[:, 0, 0] = [-1, -1]
    grid[:, 0, 1] = [1, 1]
    expected = F.grid_sample(
        torch_utils.nchw(image), torch.from_numpy(grid), align_corners=True, padding_mode="zeros"
    )
    got = layers.warp(jnp.asarray(image), jnp.asarray(grid))
    np.testing.assert_allclose(got, torch_utils.nhwc(expected), atol=1e-5)


def test_inverse_2x2_matches_torch_inverse():
    """FOMM inverts the keypoint jacobians with torch.inverse (LU); ours is the closed form,
    as exact: its error from the float64 inverse is within a few float32 ulps times the
    condition number."""
    rng = np.random.default_rng(0)
    jacobians = (np.eye(2) + 0.5 * rng.normal(size=(3, 10, 2, 2))).astype(np.float32)
    jacobians[0, 0] = [[1e-3, 2.0], [-3.0, 0.5]]  # a near-zero pivot
    got = np.asarray(layers.inverse_2x2(jnp.asarray(jacobians)))
    np.testing.assert_allclose(got, torch.inverse(torch.from_numpy(jacobians)), rtol=1e-4)
    exact = np.linalg.inv(jacobians.astype(np.float64))
    error = np.abs(got - exact).max(axis=(-2, -1)) / np.abs(exact).max(axis=(-2, -1))
    condition = np.linalg.cond(jacobians.astype(np.float64))
    assert condition.max() > 100  # the draw holds ill-conditioned ones
    assert (error / condition).max() < 4 * np.finfo(np.float32).eps


def test_warp_identity_grid_and_extra_spatial_dims():
    image = jax.random.uniform(jax.random.key(0), (2, 8, 10, 3))
    grid = jnp.broadcast_to(layers.coordinate_grid(8, 10), (2, 4, 8, 10, 2))
    out = layers.warp(image, grid)
    assert out.shape == (2, 4, 8, 10, 3)
    np.testing.assert_allclose(out, jnp.broadcast_to(image[:, None], out.shape), atol=1e-6)


def test_warp_gradients_are_finite_and_nonzero():
    image = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3))
    grid = jax.random.uniform(jax.random.key(1), (1, 5, 5, 2), minval=-0.9, maxval=0.9)
    g_img, g_grid = jax.grad(lambda i, g: jnp.sum(layers.warp(i, g) ** 2), (0, 1))(image, grid)
    assert np.all(np.isfinite(g_img)) and np.all(np.isfinite(g_grid))
    assert np.abs(g_grid).sum() > 0


@pytest.mark.parametrize("size", [(32, 32), (8, 12), (33, 17)])
def test_resize_bilinear_matches_interpolate(size):
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    expected = F.interpolate(torch_utils.nchw(x), size=size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(
        layers.resize_bilinear(jnp.asarray(x), *size), torch_utils.nhwc(expected), atol=1e-5
    )


@pytest.mark.parametrize(("scale", "shape"), [(0.25, (2, 64, 64, 3)), (0.5, (2, 64, 64, 3)),
                                             (0.25, (1, 33, 18, 2))])  # fmt: skip
def test_antialias_downsample_matches_fomm(scale, shape):
    """Values and input gradient (the matmul form is also the gradient's), odd sizes too."""
    x = np.random.default_rng(2).uniform(size=shape).astype(np.float32)
    reference = torch_layers.AntiAliasInterpolation2d(shape[-1], scale)
    x_torch = torch_utils.nchw(x).requires_grad_(True)
    expected = reference(x_torch)
    down = lambda v: layers.AntiAliasDownsample(scale).apply({}, v)
    got, vjp = jax.vjp(down, jnp.asarray(x))
    np.testing.assert_allclose(got, torch_utils.nhwc(expected.detach()), atol=1e-6)
    weights = np.random.default_rng(4).normal(size=got.shape).astype(np.float32)
    (expected * torch_utils.nchw(weights)).sum().backward()
    np.testing.assert_allclose(
        vjp(jnp.asarray(weights))[0], torch_utils.nhwc(x_torch.grad), atol=1e-6
    )
    np.testing.assert_allclose(
        layers.gaussian_kernel(scale), reference.weight[0, 0].numpy(), atol=1e-7
    )


@pytest.mark.parametrize(
    ("pool", "torch_pool"),
    [(layers.avg_pool2x2, F.avg_pool2d), (layers.max_pool2x2, F.max_pool2d)],
)
@pytest.mark.parametrize("shape", [(2, 8, 12, 3), (1, 7, 9, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_2x2_pools_and_their_gradients_match_torch(pool, torch_pool, shape, ties):
    """Distinct values, or three values only (a max window holding its maximum twice or more:
    the gradient goes to the first, as torch's); odd sizes drop the last row/column."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, shape) if ties else rng.permutation(np.prod(shape)).reshape(shape)
    x = x.astype(np.float32)
    x_torch = torch_utils.nchw(x).requires_grad_(True)
    expected = torch_pool(x_torch, 2)
    got, vjp = jax.vjp(pool, jnp.asarray(x))
    np.testing.assert_allclose(got, torch_utils.nhwc(expected.detach()), rtol=1e-6)
    weights = np.random.default_rng(6).normal(size=got.shape).astype(np.float32)
    (expected * torch_utils.nchw(weights)).sum().backward()
    np.testing.assert_allclose(
        vjp(jnp.asarray(weights))[0], torch_utils.nhwc(x_torch.grad), rtol=1e-6
    )


@pytest.mark.parametrize(
    "use_bias, size, kernel",
    [(True, (2, 2), 3), (False, (2, 2), 3), (True, (1, 3), 3), (True, (2, 1), 5)],
)
def test_conv_small_map_form_equals_flax_conv(use_bias, size, kernel):
    """Maps of <= SMALL_MAP_PIXELS take patches @ kernel: same parameters, same results."""
    x = jax.random.normal(jax.random.key(0), (3, *size, 16))
    conv = layers.Conv(8, kernel, use_bias=use_bias)
    variables = conv.init(jax.random.key(1), x)
    if use_bias:
        bias = jax.random.normal(jax.random.key(2), (8,))
        variables = {"params": {**variables["params"], "bias": bias}}
    half = kernel // 2
    reference = flax.linen.Conv(8, (kernel,) * 2, padding=((half, half),) * 2, use_bias=use_bias)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, reference.init(jax.random.key(1), x)
    )
    np.testing.assert_allclose(conv.apply(variables, x), reference.apply(variables, x), atol=1e-5)


@pytest.mark.parametrize("inputs, outputs", [(3, 8), (8, 3)])
def test_conv_same_gradients_equal_xla_convolution(inputs, outputs, monkeypatch):
    """conv_same (GEMM kernel gradient over bands of rows, patching either
    side) has the values and both gradients of lax's convolution."""
    monkeypatch.setattr(layers, "KERNEL_GRADIENT_BAND_BYTES", 5000)  # 9 rows: 3 bands of 3
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, inputs))
    w = jax.random.normal(jax.random.key(1), (3, 3, inputs, outputs))
    weights = jax.random.normal(jax.random.key(2), (2, 9, 7, outputs))
    reference = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    loss = lambda conv: lambda x, w: jnp.sum(conv(x, w) * weights)
    np.testing.assert_allclose(layers.conv_same(x, w), reference(x, w), rtol=1e-5, atol=1e-5)
    ours = jax.jit(jax.grad(loss(layers.conv_same), (0, 1)))(x, w)
    theirs = jax.jit(jax.grad(loss(reference), (0, 1)))(x, w)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * jnp.abs(b).max())


def test_conv_gemm_kernel_gradient_form_equals_flax_conv(monkeypatch):
    """Kernel gradients of >= KERNEL_GRADIENT_GEMM_FLOPS run conv_same: flax's parameters,
    values and gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 4))
    conv = layers.Conv(3, 3)
    variables = conv.init(jax.random.key(1), x)
    flops = 2 * 9 * 4 * 3 * 2 * 6 * 5
    for threshold, gemm in ((flops + 1, False), (flops, True)):
        monkeypatch.setattr(layers, "KERNEL_GRADIENT_GEMM_FLOPS", threshold)
        assert ("custom_vjp_call" in str(jax.make_jaxpr(conv.apply)(variables, x))) == gemm
    reference = flax.linen.Conv(3, (3, 3), padding=((1, 1),) * 2)
    loss = lambda module: lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))
    actual = jax.value_and_grad(loss(conv), (0, 1))(variables, x)
    expected = jax.value_and_grad(loss(reference), (0, 1))(variables, x)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), actual, expected
    )


@pytest.mark.parametrize("size", [(9, 7), (2, 2)])  # a convolution; a tiny map's matmul form
def test_a_frozen_conv_takes_its_input_gradient_from_the_prepared_kernel(size):
    """with_input_gradient_kernels: the Conv's values and input gradient unchanged, its kernel
    gradient zero (a constant), and no kernel rotated in the differentiated graph."""
    x = jax.random.normal(jax.random.key(0), (2, *size, 4))
    conv = layers.Conv(6, 3)
    variables = conv.init(jax.random.key(1), x)
    variables["params"]["bias"] = jax.random.normal(jax.random.key(2), (6,))
    frozen = layers.with_input_gradient_kernels(variables)
    assert jax.tree.map(jnp.shape, frozen[layers.INPUT_GRADIENT_KERNELS]) == {
        "kernel": (3, 3, 6, 4)
    }
    loss = lambda v, x: jnp.sum(jnp.sin(conv.apply(v, x)))
    np.testing.assert_allclose(conv.apply(frozen, x), conv.apply(variables, x), atol=1e-6)
    gradients = jax.grad(loss, (0, 1))
    (frozen_params, frozen_x), (params, x_gradient) = gradients(frozen, x), gradients(variables, x)
    np.testing.assert_allclose(frozen_x, x_gradient, rtol=1e-5, atol=1e-6)
    assert not np.any(frozen_params["params"]["kernel"]) and np.any(params["params"]["kernel"])
    rotations = lambda v: str(jax.make_jaxpr(jax.grad(loss, 1))(v, x)).count(" rev[")
    assert rotations(frozen) == 0 and rotations(variables) == (size != (2, 2))


def test_kp2gaussian_matches_fomm():
    kp = np.random.default_rng(3).uniform(-1, 1, size=(2, 5, 2)).astype(np.float32)
    expected = torch_layers.kp2gaussian({"value": torch.from_numpy(kp)}, (12, 9), 0.01)
    got = layers.kp2gaussian(jnp.asarray(kp), 12, 9, 0.01)
    np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), expected.numpy(), atol=1e-6)


def test_cbam_gates_features_in_unit_interval():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    cbam = layers.CBAM(reduction=16)
    variables = cbam.init(jax.random.key(1), x)
    assert variables["params"]["fc1"]["kernel"].shape == (32, 2)
    assert variables["params"]["spatial"]["kernel"].shape == (7, 7, 2, 1)
    out = cbam.apply(variables, x)
    assert out.shape == x.shape and np.all(np.isfinite(out))
    # Each output is the input scaled by a channel gate and a spatial gate, both in (0, 1).
    ratio = np.asarray(out / x)
    assert np.all((ratio > 0) & (ratio < 1))
    out_bf16 = layers.CBAM(dtype=jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16))
    assert out_bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(out_bf16.astype(jnp.float32), out, atol=0.05, rtol=0.05)


def test_hourglass_attention_adds_cbam_on_feature_skips_only():
    x = jnp.zeros((1, 16, 16, 4))
    plain = layers.Hourglass(8, 3, 32)
    attn = layers.Hourglass(8, 3, 32, attention=True)
    v_plain = plain.init(jax.random.key(0), x, train=False)
    v_attn = attn.init(jax.random.key(0), x, train=False)
    decoder = v_attn["params"]["decoder"]
    assert sorted(k for k in decoder if k.startswith("attention")) == [
        "attention_0",
        "attention_1",
    ]  # the two feature skips; the input skip has none
    outs = attn.apply(v_attn, x, train=False)
    assert [o.shape[1] for o in outs] == [4, 8, 16]
    assert outs[-1].shape[-1] == 8 + 4  # block_expansion + input channels, as FOMM
    assert jax.tree.structure(v_plain["batch_stats"]) == jax.tree.structure(v_attn["batch_stats"])
