"""Losses against FOMM's PyTorch code (tests/losses_torch.py) and their invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import tiny
from maskrenderer_jax import losses
from maskrenderer_jax.losses import equivariance
from maskrenderer_jax.models import maskrenderer as mr
from tests import losses_torch as lt
from tests.torch_utils import nchw, nhwc

ATOL = 1e-5
SCALES = (1, 0.5, 0.25, 0.125)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _image(rng, shape):
    return rng.uniform(0.0, 1.0, shape).astype(np.float32)


def _torch_transform(transform, points_tps=5):
    theta = torch.from_numpy(np.array(transform.theta))
    params = np.array(transform.control_params)
    if params.shape[1] == 0:
        return lt.Transform(theta)
    return lt.Transform(theta, torch.from_numpy(params[:, None, :]), points_tps)


# ----------------------------------------------------------------------------- pyramid


def test_pyramid_matches_fomm():
    image = _image(_rng(), (2, 32, 24, 3))
    got = losses.image_pyramid(jnp.asarray(image), SCALES)
    want = lt.ImagePyramide(SCALES, 3)(nchw(image))
    assert list(got) == [f"prediction_{s}" for s in SCALES] == list(want)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), nhwc(want[key]), atol=ATOL)


# ----------------------------------------------------------------------------- TPS transform


def test_reflection_warp_matches_torch():
    rng = _rng(1)
    frame = _image(rng, (2, 9, 11, 3))
    grid = rng.uniform(-3.5, 3.5, (2, 7, 5, 2)).astype(np.float32)
    got = equivariance.warp(jnp.asarray(frame), losses.reflect_coordinates(jnp.asarray(grid)))
    want = F.grid_sample(
        nchw(frame), torch.from_numpy(grid), padding_mode="reflection", align_corners=True
    )
    np.testing.assert_allclose(np.asarray(got), nhwc(want), atol=ATOL)


@pytest.mark.parametrize("tps", [True, False])
def test_transform_matches_fomm(tps):
    kw = dict(sigma_tps=0.005, points_tps=5) if tps else dict(sigma_tps=None, points_tps=None)
    # Larger sigmas than vox-256 (affine 0.2, TPS 0.02) so the TPS term and the reflection
    # (16% of the frame's sampling positions fall outside [-1, 1]) are exercised.
    transform = losses.random_tps_transform(jax.random.key(0), 3, sigma_affine=0.2, **kw)
    if tps:
        transform = transform.replace(control_params=transform.control_params * 4)
    ref = _torch_transform(transform)
    coords = _rng(2).uniform(-1.2, 1.2, (3, 10, 2)).astype(np.float32)

    got = transform.warp_coordinates(jnp.asarray(coords))
    np.testing.assert_allclose(
        np.asarray(got), ref.warp_coordinates(torch.from_numpy(coords)).numpy(), atol=ATOL
    )
    coords_t = torch.from_numpy(coords).requires_grad_(True)
    np.testing.assert_allclose(
        np.asarray(transform.jacobian(jnp.asarray(coords))),
        ref.jacobian(coords_t).detach().numpy(),
        atol=ATOL,
    )
    frame = _image(_rng(3), (3, 16, 20, 3))
    np.testing.assert_allclose(
        np.asarray(jax.jit(type(transform).transform_frame)(transform, jnp.asarray(frame))),
        nhwc(ref.transform_frame(nchw(frame))),
        atol=ATOL,
    )


def test_transform_of_a_shared_grid_under_jit_matches_float64():
    """A [1, 64*64] grid warped by 8 transforms, jitted, as transform_frame does in training.
    XLA:CPU (jaxlib 0.10.2) miscompiled the broadcast-multiply-reduce form of the TPS sum here
    (errors of ~75 with unit control parameters, only when fused with the affine part)."""
    transform = losses.random_tps_transform(jax.random.key(0), 8)
    transform = transform.replace(control_params=transform.control_params * 200)  # ~N(0, 1)
    grid = np.asarray(losses.equivariance.coordinate_grid(64, 64)).reshape(1, -1, 2)
    got = jax.jit(type(transform).warp_coordinates)(transform, jnp.asarray(grid))
    theta = np.asarray(transform.theta, np.float64)
    points = np.asarray(transform.control_points, np.float64)
    params = np.asarray(transform.control_params, np.float64)
    dist = np.abs(grid[0, :, None, :] - points).sum(-1)
    tps = (dist**2 * np.log(dist + 1e-6)) @ params.T
    want = (
        np.einsum("bij,nj->bni", theta[:, :, :2], grid[0]) + theta[:, None, :, 2] + tps.T[..., None]
    )
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_random_transform_statistics():
    transform = losses.random_tps_transform(jax.random.key(1), 4000)
    noise = np.asarray(transform.theta) - np.eye(2, 3)
    assert abs(noise.std() - 0.05) < 0.002 and abs(noise.mean()) < 0.002
    params = np.array(transform.control_params)
    assert params.shape == (4000, 25) and abs(params.std() - 0.005) < 0.0002
    # FOMM's control grid: make_coordinate_grid((5, 5)) flattened, x fastest.
    np.testing.assert_allclose(
        np.asarray(transform.control_points)[:6, 0], [-1, -0.5, 0, 0.5, 1, -1]
    )


# ----------------------------------------------------------------------------- equivariance


def _keypoints(rng, batch=2, k=5):
    value = rng.uniform(-0.9, 0.9, (batch, k, 2)).astype(np.float32)
    jac = (np.eye(2) + 0.3 * rng.standard_normal((batch, k, 2, 2))).astype(np.float32)
    return {"value": value, "jacobian": jac}


def test_equivariance_losses_match_fomm_values_and_gradients():
    rng = _rng(4)
    kp_d, kp_t = _keypoints(rng), _keypoints(rng)
    transform = losses.random_tps_transform(jax.random.key(2), 2, 0.1, 0.05, 5)

    def total(kp_d, kp_t):
        out = losses.equivariance_losses(kp_d, kp_t, transform)
        return out["equivariance_value"] + out["equivariance_jacobian"], out

    jd = jax.tree.map(jnp.asarray, kp_d)
    jt = jax.tree.map(jnp.asarray, kp_t)
    (_, out), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(jd, jt)

    td = {k: torch.from_numpy(v).requires_grad_(True) for k, v in kp_d.items()}
    tt = {k: torch.from_numpy(v).requires_grad_(True) for k, v in kp_t.items()}
    value, jacobian = lt.equivariance_losses(td, tt, _torch_transform(transform))
    (value + jacobian).backward()
    np.testing.assert_allclose(out["equivariance_value"], value.item(), atol=ATOL)
    np.testing.assert_allclose(out["equivariance_jacobian"], jacobian.item(), atol=ATOL)
    for got, want in ((grads[0], td), (grads[1], tt)):
        for key in ("value", "jacobian"):
            np.testing.assert_allclose(got[key], want[key].grad.numpy(), atol=1e-4)


def test_equivariance_losses_vanish_for_equivariant_keypoints():
    rng = _rng(5)
    kp_t = jax.tree.map(jnp.asarray, _keypoints(rng))
    transform = losses.random_tps_transform(jax.random.key(3), 2, 0.1, 0.05, 5)
    kp_d = {
        "value": transform.warp_coordinates(kp_t["value"]),
        "jacobian": transform.jacobian(kp_t["value"]) @ kp_t["jacobian"],
    }
    out = losses.equivariance_losses(kp_d, kp_t, transform)
    assert float(out["equivariance_value"]) < 1e-6
    assert float(out["equivariance_jacobian"]) < 1e-5
    out = losses.equivariance_losses({"value": kp_d["value"]}, kp_t, transform)
    assert set(out) == {"equivariance_value"}


# ----------------------------------------------------------------------------- perceptual


def _conv_weights(rng, channels=(3, 4, 4, 4, 4, 4)):
    return [
        (0.3 * rng.standard_normal((co, ci, 3, 3))).astype(np.float32)
        for ci, co in zip(channels[:-1], channels[1:], strict=True)
    ]


def _jax_features(weights):
    def features(x):
        out = []
        for w in weights:
            x = jax.lax.conv_general_dilated(
                x,
                jnp.asarray(w.transpose(2, 3, 1, 0)),
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            x = jax.nn.relu(x)
            out.append(x)
        return out

    return features


def _torch_features(weights):
    def features(x):
        out = []
        for w in weights:
            x = torch.relu(F.conv2d(x, torch.from_numpy(w), padding=1))
            out.append(x)
        return out

    return features


def test_perceptual_loss_matches_fomm():
    rng = _rng(6)
    weights = _conv_weights(rng)
    pred, target = _image(rng, (2, 32, 32, 3)), _image(rng, (2, 32, 32, 3))
    loss_w = (10.0, 10.0, 5.0, 10.0, 1.0)

    def loss(p, t):
        return losses.perceptual_loss(_jax_features(weights), p, t, SCALES, loss_w)

    value, (g_pred, g_target) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(pred, target)
    tp = nchw(pred).requires_grad_(True)
    ref = lt.perceptual_loss(
        _torch_features(weights), lt.ImagePyramide(SCALES, 3), tp, nchw(target), SCALES, loss_w
    )
    ref.backward()
    np.testing.assert_allclose(value, ref.item(), rtol=1e-5)
    np.testing.assert_allclose(g_pred, nhwc(tp.grad), atol=1e-6)
    assert not np.any(g_target)  # FOMM detaches the target features
    assert float(loss(pred, pred)) == 0.0


# ----------------------------------------------------------------------------- adversarial


def _disc_maps(rng, scales=(1, 0.5)):
    maps = {}
    for s in scales:
        n = int(16 * s)
        maps[f"feature_maps_{s}"] = [
            rng.standard_normal((2, n // 2**i, n // 2**i, 4 * 2**i)).astype(np.float32)
            for i in range(4)
        ]
        maps[f"prediction_map_{s}"] = rng.standard_normal((2, n // 8, n // 8, 1)).astype(np.float32)
    return maps


def _to_torch(maps):
    return {
        k: [nchw(v) for v in vs] if isinstance(vs, list) else nchw(vs) for k, vs in maps.items()
    }


def test_adversarial_losses_match_fomm():
    rng = _rng(7)
    real, fake = _disc_maps(rng), _disc_maps(rng)
    treal, tfake = _to_torch(real), _to_torch(fake)
    fm_weights = (10.0, 0.0, 10.0, 5.0)
    np.testing.assert_allclose(
        losses.generator_gan_loss(fake), lt.generator_gan_loss(tfake, (1, 0.5)).item(), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.discriminator_gan_loss(real, fake),
        lt.discriminator_gan_loss(treal, tfake, (1, 0.5)).item(),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        losses.feature_matching_loss(real, fake, fm_weights),
        lt.feature_matching_loss(treal, tfake, (1, 0.5), fm_weights).item(),
        rtol=1e-6,
    )


def test_lsgan_targets():
    ones = {"prediction_map_1": jnp.ones((2, 4, 4, 1))}
    zeros = {"prediction_map_1": jnp.zeros((2, 4, 4, 1))}
    assert float(losses.generator_gan_loss(ones)) == 0.0
    assert float(losses.generator_gan_loss(zeros)) == 1.0
    assert float(losses.discriminator_gan_loss(ones, zeros)) == 0.0
    assert float(losses.discriminator_gan_loss(zeros, ones)) == 2.0


# ----------------------------------------------------------------------------- warping


def test_warping_loss():
    rng = _rng(8)
    drv = [jnp.asarray(rng.standard_normal((2, 16 // 2**i, 16 // 2**i, 4))) for i in range(3)]
    occ = [jnp.asarray(rng.uniform(0, 1, (2, 16 // 2**i, 16 // 2**i, 1))) for i in range(3)]
    gated = [d * o for d, o in zip(drv, occ, strict=True)]
    assert float(losses.warping_loss(drv, drv)) == 0.0
    assert float(losses.warping_loss(gated, drv, occ)) == 0.0
    # FOMM-style generator: only the deepest level is warped, one mask for it.
    assert float(losses.warping_loss(drv[-1:], drv)) == 0.0
    assert float(losses.warping_loss([gated[-1]], drv, [occ[-1]])) == 0.0

    warped = [g + 0.5 for g in gated]
    np.testing.assert_allclose(losses.warping_loss(warped, drv, occ), 1.5, rtol=1e-6)
    g_warped, g_drv = jax.grad(lambda w, d: losses.warping_loss(w, d, occ), argnums=(0, 1))(
        warped, drv
    )
    assert all(not np.any(g) for g in g_drv)  # TPSMM detaches the driving features
    assert all(np.allclose(g, 1.0 / g.size) for g in g_warped)
    with pytest.raises(ValueError, match="warped levels"):
        losses.warping_loss(drv, drv[:2])


# ----------------------------------------------------------------------------- reconstruction


def test_reconstruction_loss_is_the_pixel_l1_and_trains_the_prediction_only():
    rng = _rng(9)
    prediction = jnp.asarray(_image(rng, (2, 8, 8, 3)))
    target = jnp.asarray(_image(rng, (2, 8, 8, 3)))
    np.testing.assert_allclose(
        losses.reconstruction_loss(prediction, target),
        np.abs(np.asarray(prediction) - np.asarray(target)).mean(),
        rtol=1e-6,
    )
    assert float(losses.reconstruction_loss(target, target)) == 0.0
    g_pred, g_target = jax.grad(losses.reconstruction_loss, argnums=(0, 1))(prediction, target)
    assert not np.any(g_target)  # the driving frame is a fixed target
    np.testing.assert_allclose(
        g_pred, np.sign(np.asarray(prediction - target)) / prediction.size, rtol=1e-6
    )


# ----------------------------------------------------------------------------- triplet


def _unit(*components, dim=8):
    v = np.zeros(dim, np.float32)
    v[: len(components)] = components
    return v / np.linalg.norm(v)


def test_triplet_loss_zero_for_separated_identities():
    a = np.stack([_unit(1, 0), _unit(0, 0, 1)])
    p = np.stack([_unit(1, 0.05), _unit(0.02, 0, 1)])
    n = np.stack([_unit(0, 1), _unit(0, 0, 0, 1)])  # orthogonal: d = sqrt(2) > 1 + d(a, p)
    assert float(losses.triplet_loss(a, p, p, n)) == 0.0
    # Normalisation: scaling embeddings changes nothing.
    assert float(losses.triplet_loss(3 * a, 2 * p, 5 * p, 7 * n)) == 0.0


def test_triplet_loss_matches_torch_and_formula():
    rng = _rng(9)
    a, p1, p2, n = (rng.standard_normal((4, 16)).astype(np.float32) for _ in range(4))
    got = losses.triplet_loss(a, p1, p2, n, alpha=0.8, margin=1.0)
    tml = torch.nn.TripletMarginLoss(margin=1.0, p=2)

    def norm(x):
        return F.normalize(torch.from_numpy(x), dim=-1)

    want = 0.8 * tml(norm(a), norm(p1), norm(n)) + 0.2 * tml(norm(a), norm(p2), norm(n))
    np.testing.assert_allclose(got, want.item(), rtol=1e-5)
    assert float(got) > 0


def test_triplet_gradient_pulls_positive_to_anchor_and_pushes_negative():
    a = np.stack([_unit(1, 0)])
    p = np.stack([_unit(1, 1)])  # 45 degrees from the anchor
    n = np.stack([_unit(1, 0.5)])  # closer to the anchor than p: a violated triplet
    g_p, g_n = jax.grad(lambda p, n: losses.triplet_loss(a, p, p, n), argnums=(0, 1))(p, n)
    assert np.dot(-g_p[0], a[0] - p[0]) > 0  # descent moves p towards a
    assert np.dot(-g_n[0], n[0] - a[0]) > 0  # and n away from a
    # A step of gradient descent on the positives lowers the loss.
    before = losses.triplet_loss(a, p, p, n)
    assert float(losses.triplet_loss(a, p - 0.1 * g_p, p - 0.1 * g_p, n)) < float(before)


def test_identity_triplet_loss_gradients_reach_reenactments_only():
    rng = _rng(10)
    proj = jnp.asarray(rng.standard_normal((8 * 8 * 3, 6)).astype(np.float32))

    def embed(images):
        return images.reshape(images.shape[0], -1) @ proj

    imgs = [jnp.asarray(_image(rng, (2, 8, 8, 3))) for _ in range(4)]
    value = losses.identity_triplet_loss(embed, *imgs)
    direct = losses.triplet_loss(*(embed(x) for x in imgs))
    np.testing.assert_allclose(value, direct, rtol=1e-6)
    grads = jax.grad(lambda *x: losses.identity_triplet_loss(embed, *x), argnums=(0, 1, 2, 3))(
        *imgs
    )
    assert not np.any(grads[0]) and not np.any(grads[3])


def test_warping_loss_pairs_with_the_generator_outputs():
    # Abstract (eval_shape): the generator's warped levels and its encoder's levels line up
    # and the loss traces, without compiling the model.
    config = tiny.get_config()
    model = mr.build_model(config.model)
    inputs = mr.example_inputs(config.model, 2)
    variables = jax.eval_shape(lambda k: mr.init_variables(config.model, k, 2), jax.random.key(0))

    def loss(variables):
        out = model.apply(variables, **inputs, train=False)
        drv = model.apply(
            variables,
            inputs["driving"],
            method=lambda m, x: m.generator.encode(x, train=False),
        )
        assert [f.shape for f in out["warped_features"]] == [f.shape for f in drv]
        return losses.warping_loss(out["warped_features"], drv, out["occlusion_maps"])

    value = jax.eval_shape(loss, variables)
    assert value.shape == () and value.dtype == jnp.float32
