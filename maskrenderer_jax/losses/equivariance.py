"""Equivariance constraints on the keypoints (FFD) under a random thin-plate-spline warp, as
FOMM's §3.3 (eqs. (10)-(11) of Siarohin et al. 2019), which MaskRenderer keeps.

`TPSTransform` mirrors FOMM's `modules/model.py:Transform` term by term: a random affine
matrix theta = I + N(0, sigma_affine) [B, 2, 3] plus a TPS term
sum_p c_p r_p^2 log(r_p + 1e-6) over a points_tps x points_tps grid of control points, where
r_p is the **L1** distance to control point p (FOMM sums |dx| + |dy|, not the Euclidean norm)
and c_p ~ N(0, sigma_tps) is one scalar per control point, added to both output coordinates.
"""

import math

import flax.struct
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.layers import coordinate_grid, inverse_2x2, warp

_HI = jax.lax.Precision.HIGHEST


@flax.struct.dataclass
class TPSTransform:
    """A batch of random warps T: [-1, 1]^2 -> R^2 (pure pytree; jit/vmap-friendly).

    theta: [B, 2, 3] affine part. control_points: [P, 2] (x, y). control_params: [B, P].
    """

    theta: jax.Array
    control_points: jax.Array
    control_params: jax.Array

    def warp_coordinates(self, coords: jax.Array) -> jax.Array:
        """T(z) for points z.

        Args:
          coords: [B or 1, N, 2] (x, y); a batch of 1 is broadcast against the transforms
            (FOMM warps one shared grid in `transform_frame`).
        Returns:
          [B, N, 2] float32.
        """
        coords = coords.astype(jnp.float32)
        batch = max(coords.shape[0], self.theta.shape[0])
        coords = jnp.broadcast_to(coords, (batch, *coords.shape[1:]))
        # Both sums as dot_generals: XLA:CPU (jaxlib 0.10.2) miscompiles the equivalent
        # broadcast-multiply-reduce of the TPS term when fused with the addition (wrong values
        # on 1 device at [8, 4096] points; see tests/test_losses.py).
        out = jnp.einsum("bij,bnj->bni", self.theta[:, :, :2], coords, precision=_HI)
        out = out + self.theta[:, None, :, 2]
        # FOMM's TPS radius is the L1 distance; r^2 log(r + 1e-6) is finite (0) at r = 0.
        dist = jnp.sum(jnp.abs(coords[:, :, None, :] - self.control_points), axis=-1)
        basis = dist**2 * jnp.log(dist + 1e-6)
        tps = jnp.einsum("bnp,bp->bn", basis, self.control_params, precision=_HI)
        return out + tps[..., None]

    def jacobian(self, coords: jax.Array) -> jax.Array:
        """dT/dz at each point, [B, N, 2, 2] with J[..., i, j] = dT_i / dz_j.

        FOMM differentiates sum(T(z)_x) and sum(T(z)_y) by autograd; since each output point
        depends on its own input point only, two forward-mode products (one per input axis)
        give the same per-point matrices, and stay differentiable w.r.t. `coords`.

        Args:
          coords: [B, N, 2].
        """
        coords = coords.astype(jnp.float32)
        columns = []
        for j in range(2):
            tangent = jnp.zeros_like(coords).at[..., j].set(1.0)
            columns.append(jax.jvp(self.warp_coordinates, (coords,), (tangent,))[1])
        return jnp.stack(columns, axis=-1)

    def transform_frame(self, frame: jax.Array) -> jax.Array:
        """The frame resampled at T(grid): out(z) = frame(T(z)), reflection padding.

        FOMM: `grid_sample(frame, T(grid), padding_mode='reflection')` with align_corners=True
        behaviour (torch 1.0). `layers.warp` pads with zeros, so the sampling positions are
        first reflected into [-1, 1]; with align_corners=True torch reflects about the
        centres of the border pixels, which are exactly +-1.

        Args:
          frame: [B, H, W, C] float32.
        Returns:
          [B, H, W, C] in the dtype of `frame`.
        """
        batch, height, width, _ = frame.shape
        grid = coordinate_grid(height, width).reshape(1, height * width, 2)
        grid = self.warp_coordinates(grid).reshape(batch, height, width, 2)
        return warp(frame, reflect_coordinates(grid))


def reflect_coordinates(coords: jax.Array) -> jax.Array:
    """Folds coordinates into [-1, 1] by mirroring at +-1 (torch's reflection padding with
    align_corners=True): period 4, x -> 1 - |((x + 1) mod 4) - 2|."""
    folded = 1.0 - jnp.abs(jnp.mod(coords + 1.0, 4.0) - 2.0)
    return jnp.clip(folded, -1.0, 1.0)


def tps_transform(theta: jax.Array, control_params: jax.Array | None = None) -> TPSTransform:
    """FOMM's Transform with given parameters (what its constructor draws).

    Args:
      theta: [B, 2, 3] affine part (FOMM: I + N(0, sigma_affine)).
      control_params: [B, P] or FOMM's [B, 1, P] with P = points_tps^2 a square (FOMM:
        N(0, sigma_tps)); None (or P = 0) for an affine-only warp (FOMM's `tps=False`).
    """
    theta = jnp.asarray(theta, jnp.float32)
    batch = theta.shape[0]
    if control_params is None:
        control_params = jnp.zeros((batch, 0), jnp.float32)
    params = jnp.asarray(control_params, jnp.float32).reshape(batch, -1)
    points_tps = math.isqrt(params.shape[1])
    if points_tps**2 != params.shape[1]:
        raise ValueError(f"control_params: {params.shape[1]} points is not a square grid")
    # FOMM's make_coordinate_grid((n, n)) flattened row-major: x varies fastest.
    points = coordinate_grid(points_tps, points_tps).reshape(-1, 2)
    return TPSTransform(theta=theta, control_points=points, control_params=params)


def random_tps_transform(
    rng: jax.Array,
    batch: int,
    sigma_affine: float = 0.05,
    sigma_tps: float | None = 0.005,
    points_tps: int | None = 5,
) -> TPSTransform:
    """FOMM's random Transform (vox-256: sigma_affine 0.05, sigma_tps 0.005, points_tps 5).

    With `sigma_tps` or `points_tps` None the warp is affine only (FOMM's `tps=False`): no
    control points, so the TPS sum is empty.
    """
    k_affine, k_tps = jax.random.split(rng)
    noise = sigma_affine * jax.random.normal(k_affine, (batch, 2, 3), jnp.float32)
    theta = noise + jnp.eye(2, 3, dtype=jnp.float32)
    params = None
    if sigma_tps is not None and points_tps is not None:
        params = sigma_tps * jax.random.normal(k_tps, (batch, points_tps**2), jnp.float32)
    return tps_transform(theta, params)


def equivariance_losses(kp_driving: dict, kp_transformed: dict, transform: TPSTransform) -> dict:
    """The value and jacobian terms (unweighted; FOMM weights both by 10), as FOMM computes them.

    kp_transformed are the keypoints detected on `transform.transform_frame(driving)`, so
    equivariance asks kp_driving = T(kp_transformed) and J_driving = dT(kp_T) J_transformed.
    FOMM detaches nothing here: both keypoint sets (and their jacobians) receive gradients.

    Args:
      kp_driving, kp_transformed: {'value': [B, K, 2], 'jacobian': [B, K, 2, 2] (optional)}.
      transform: the TPSTransform used to make the transformed frame.
    Returns:
      {'equivariance_value': mean |kp_d - T(kp_T)|,
       'equivariance_jacobian': mean |I - J_d^{-1} (dT(kp_T) J_T)|} (the second only when
      both dicts carry jacobians), scalars float32.
    """
    value_d = kp_driving["value"].astype(jnp.float32)
    value_t = kp_transformed["value"].astype(jnp.float32)
    out = {"equivariance_value": jnp.mean(jnp.abs(value_d - transform.warp_coordinates(value_t)))}
    if "jacobian" in kp_driving and "jacobian" in kp_transformed:
        jac_t = jnp.matmul(
            transform.jacobian(value_t),
            kp_transformed["jacobian"].astype(jnp.float32),
            precision=_HI,
        )
        normed = jnp.matmul(
            inverse_2x2(kp_driving["jacobian"].astype(jnp.float32)), jac_t, precision=_HI
        )
        out["equivariance_jacobian"] = jnp.mean(jnp.abs(jnp.eye(2, dtype=jnp.float32) - normed))
    return out
