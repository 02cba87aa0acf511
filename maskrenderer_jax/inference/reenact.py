"""Animating one source image by a driving frame sequence (FOMM's demo.py / animate.py).

Per source: keypoints once. Per driving frame: keypoints, FOMM's relative motion against the
first driving frame (`relative_keypoints`), the 3D branch's inputs for the same relative 3DMM
motion (exp, angle, trans = S + (D - D0)) when the model has it, then dense motion and the
generator. Frames run in fixed-size chunks (the last one padded) so that one compiled program
serves a clip of any length.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.typing import ArrayLike
from scipy.spatial import ConvexHull

from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d.branch import branch_inputs
from maskrenderer_jax.models import maskrenderer as mr


def movement_scale(kp_source: dict, kp_driving_initial: dict) -> float:
    """FOMM's adapt_movement_scale: sqrt(hull area of the source keypoints) / sqrt(hull area
    of the initial driving keypoints), of the first batch element, computed on the host with
    scipy's ConvexHull (`.volume` of a 2D hull is its area), as FOMM's normalize_kp does.

    Args:
      kp_source, kp_driving_initial: {'value': [B, K, 2] (x, y) in [-1, 1], ...}, concrete
        (not traced) arrays; K >= 3 points not all on a line.
    Returns:
      The scale, a Python float > 0.
    """
    source_area = ConvexHull(np.asarray(kp_source["value"][0], np.float64)).volume
    driving_area = ConvexHull(np.asarray(kp_driving_initial["value"][0], np.float64)).volume
    return float(np.sqrt(source_area) / np.sqrt(driving_area))


def _relative(kp_source: dict, kp_driving: dict, kp_driving_initial: dict, scale) -> dict:
    """normalize_kp(use_relative_movement=True, use_relative_jacobian=True) with a given scale
    (traceable: the scale is an argument, not a hull)."""
    out = dict(kp_driving)  # FOMM copies the driving dict, then overrides value / jacobian
    out["value"] = kp_source["value"] + (kp_driving["value"] - kp_driving_initial["value"]) * scale
    if all("jacobian" in kp for kp in (kp_source, kp_driving, kp_driving_initial)):
        # FOMM: matmul(J_d, inverse(J_d0)) then matmul(., J_s), float32 as the keypoints.
        inverse = jnp.linalg.inv(kp_driving_initial["jacobian"])
        change = jnp.einsum("...ij,...jk->...ik", kp_driving["jacobian"], inverse)
        out["jacobian"] = jnp.einsum("...ij,...jk->...ik", change, kp_source["jacobian"])
    return out


def relative_keypoints(
    kp_source: dict,
    kp_driving: dict,
    kp_driving_initial: dict,
    *,
    adapt_movement_scale: bool = False,
) -> dict:
    """FOMM's relative motion: the source's keypoints moved as the driver moved since its first
    frame (`normalize_kp(use_relative_movement=True, use_relative_jacobian=True)`).

    value = kp_source + (kp_driving - kp_driving_initial) * scale,
    jacobian = (J_driving @ inv(J_driving_initial)) @ J_source,
    scale = `movement_scale(kp_source, kp_driving_initial)` if adapt_movement_scale else 1.

    Args:
      kp_source, kp_driving, kp_driving_initial: {'value': [B, K, 2] float32 (x, y) in
        [-1, 1], 'jacobian': [B, K, 2, 2] float32 (optional: unless all three have one, the
        result keeps kp_driving's, if any)}; batch dimensions broadcast (e.g. a [1, ...]
        source against [T, ...] driving frames).
      adapt_movement_scale: scale the motion by the ratio of the keypoint hulls; needs concrete
        (not traced) kp_source and kp_driving_initial.
    Returns:
      {'value': [B, K, 2], 'jacobian': [B, K, 2, 2]} float32 (and any other key of kp_driving).
    """
    scale = movement_scale(kp_source, kp_driving_initial) if adapt_movement_scale else 1.0
    return _relative(kp_source, kp_driving, kp_driving_initial, scale)


def _tile(tree, n: int):
    """[1, ...] leaves -> [n, ...]."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape[1:]), tree)


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
    """Pads axis 0 to length n by repeating the last entry."""
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)]) if len(x) < n else x


class Reenactor:
    """Compiled reenactment for one model config; reuse it across clips and variables.

    Two compiled programs: keypoints of [source, first driving frame], and one chunk of
    `chunk_size` driving frames (keypoints, relative motion, 3D branch, dense motion,
    generator). A second program per chunk is compiled only for relative=False.
    """

    def __init__(self, model_config: ml_collections.ConfigDict, *, chunk_size: int = 8):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = mr.build_model(model_config)
        self.image_size = int(model_config.image_size)
        self.chunk_size = int(chunk_size)
        self._detect = jax.jit(self._detect_fn)
        self._chunk = jax.jit(self._chunk_fn, static_argnames="relative")

    @property
    def uses_3d(self) -> bool:
        return self.model.uses_3d

    def _detect_fn(self, variables, images):
        return self.model.apply(variables, images, train=False, method=mr.MaskRenderer.detect)

    def _chunk_fn(self, variables, face_model, source, kp_source, kp_initial, scale, driving,
                  source_coeffs, driving_coeffs, initial_coeffs, *, relative: bool):  # fmt: skip
        n = driving.shape[0]
        kp_driving = self._detect_fn(variables, driving)
        if relative:
            kp_driving = _relative(kp_source, kp_driving, kp_initial, scale)
        extra = {}
        if self.uses_3d:
            extra = branch_inputs(
                face_model,
                _tile(source_coeffs[None], n),
                driving_coeffs,
                self.image_size,
                driving_initial_coeffs=_tile(initial_coeffs[None], n) if relative else None,
            )
        out = self.model.apply(
            variables,
            _tile(source[None], n),
            _tile(kp_source, n),
            kp_driving,
            **extra,
            train=False,
            method=mr.MaskRenderer.animate,
        )
        return out["prediction"].astype(jnp.float32)

    def __call__(
        self,
        variables: dict,
        source: ArrayLike,
        driving: ArrayLike,
        *,
        face_model: mm.MorphableModel | None = None,
        source_coeffs: ArrayLike | None = None,
        driving_coeffs: ArrayLike | None = None,
        relative: bool = True,
        adapt_movement_scale: bool = False,
    ) -> np.ndarray:
        """Animates `source` by `driving`.

        Args:
          variables: the generator side's {'params', 'batch_stats'} (`mr.init_variables`).
          source: [H, W, 3] float32 in [0, 1], H = W = model image_size.
          driving: [T, H, W, 3] float32 in [0, 1]; frame 0 is the reference of relative mode.
          face_model: the 3DMM the coefficients refer to (3D-branch models only).
          source_coeffs: [257] float32 3DMM coefficients of the source (3D-branch models).
          driving_coeffs: [T, 257] float32 of the driving frames (3D-branch models).
          relative: FOMM's relative animation (keypoints and 3DMM exp/angle/trans move as the
            driver moved since frame 0); False: the driver's absolute keypoints / coefficients.
          adapt_movement_scale: relative mode only: scale the motion by the keypoint hulls'
            size ratio (FOMM's --adapt_scale).
        Returns:
          [T, H, W, 3] float32 in [0, 1], the reenacted frames (a numpy array).
        """
        source = np.asarray(source, np.float32)
        driving = np.asarray(driving, np.float32)
        size = self.image_size
        if source.shape != (size, size, 3) or driving.shape[1:] != source.shape:
            raise ValueError(
                f"need source [{size}, {size}, 3] and driving [T, {size}, {size}, 3], got "
                f"{source.shape} and {driving.shape}"
            )
        num_frames = len(driving)
        if num_frames == 0:
            raise ValueError("driving has no frames")
        if self.uses_3d:
            if face_model is None or source_coeffs is None or driving_coeffs is None:
                raise ValueError(
                    "this model uses the 3D branch: pass face_model, source_coeffs [257] and "
                    "driving_coeffs [T, 257]"
                )
            source_coeffs = np.asarray(source_coeffs, np.float32)
            driving_coeffs = np.asarray(driving_coeffs, np.float32)
            if source_coeffs.shape != (mm.NUM_COEFFS,) or driving_coeffs.shape != (
                num_frames,
                mm.NUM_COEFFS,
            ):
                raise ValueError(
                    f"need source_coeffs [{mm.NUM_COEFFS}] and driving_coeffs [{num_frames}, "
                    f"{mm.NUM_COEFFS}], got {source_coeffs.shape} and {driving_coeffs.shape}"
                )
            initial_coeffs = driving_coeffs[0]
        else:
            face_model = source_coeffs = driving_coeffs = initial_coeffs = None

        kp = self._detect(variables, np.stack([source, driving[0]]))
        kp_source = jax.tree.map(lambda x: x[:1], kp)
        kp_initial = jax.tree.map(lambda x: x[1:], kp)
        scale = 1.0
        if relative and adapt_movement_scale:
            scale = movement_scale(jax.device_get(kp_source), jax.device_get(kp_initial))

        chunk = self.chunk_size
        outputs = []
        for start in range(0, num_frames, chunk):
            frames = _pad_to(driving[start : start + chunk], chunk)
            coeffs = None
            if driving_coeffs is not None:
                coeffs = _pad_to(driving_coeffs[start : start + chunk], chunk)
            out = self._chunk(
                variables, face_model, source, kp_source, kp_initial, np.float32(scale), frames,
                source_coeffs, coeffs, initial_coeffs, relative=relative,
            )  # fmt: skip
            outputs.append(np.asarray(out)[: num_frames - start])
        return np.concatenate(outputs)


_REENACTORS: dict[tuple[str, int], Reenactor] = {}


def get_reenactor(model_config: ml_collections.ConfigDict, chunk_size: int = 8) -> Reenactor:
    """The Reenactor of a model config and chunk size, built (and compiled) once per process."""
    key = (model_config.to_json(sort_keys=True), chunk_size)
    if key not in _REENACTORS:
        _REENACTORS[key] = Reenactor(model_config, chunk_size=chunk_size)
    return _REENACTORS[key]


def reenact(
    variables: dict,
    model_config: ml_collections.ConfigDict,
    source: ArrayLike,
    driving: ArrayLike,
    *,
    face_model: mm.MorphableModel | None = None,
    source_coeffs: ArrayLike | None = None,
    driving_coeffs: ArrayLike | None = None,
    relative: bool = True,
    adapt_movement_scale: bool = False,
    chunk_size: int = 8,
) -> np.ndarray:
    """`Reenactor(model_config, chunk_size=chunk_size)(variables, source, driving, ...)`; the
    compiled Reenactor is cached per (model config, chunk size).

    Args / Returns: as `Reenactor.__call__`: source [H, W, 3], driving [T, H, W, 3] float32 in
    [0, 1] -> [T, H, W, 3] float32 in [0, 1].
    """
    reenactor = get_reenactor(model_config, int(chunk_size))
    return reenactor(
        variables,
        source,
        driving,
        face_model=face_model,
        source_coeffs=source_coeffs,
        driving_coeffs=driving_coeffs,
        relative=relative,
        adapt_movement_scale=adapt_movement_scale,
    )
