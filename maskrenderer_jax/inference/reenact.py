"""Animating one source image by a driving frame sequence (FOMM's demo.py / animate.py).

Per source, once: its keypoints and the generator's encoder features. Per driving frame:
keypoints, FOMM's relative motion against the first driving frame (`relative_keypoints`), the
3D branch's inputs for the same relative 3DMM motion (exp, angle, trans = S + (D - D0)) when
the model has it, then dense motion and the decoder. Frames run in fixed-size chunks (the last
one padded) so that one compiled program serves a clip of any length; `Reenactor.start` /
`step` stream one frame at a time.
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
from maskrenderer_jax.models.layers import inverse_2x2


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
        inverse = inverse_2x2(kp_driving_initial["jacobian"])
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

    Compiled programs: once per source, its keypoints and the generator's encoder features
    of every level (`start`); keypoints of the first driving frame; per chunk of `chunk_size`
    driving frames (or of one, `step`), their keypoints, relative motion, 3D branch, dense
    motion and the decoder on the stored source features. relative=False compiles its own
    chunk program.
    """

    def __init__(self, model_config: ml_collections.ConfigDict, *, chunk_size: int = 8):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = mr.build_model(model_config)
        self.image_size = int(model_config.image_size)
        self.chunk_size = int(chunk_size)
        self._detect = jax.jit(self._detect_fn)
        self._source = jax.jit(self._source_fn)
        self._chunk = jax.jit(self._chunk_fn, static_argnames="relative")

    @property
    def uses_3d(self) -> bool:
        return self.model.uses_3d

    def _detect_fn(self, variables, images):
        return self.model.apply(variables, images, train=False, method=mr.MaskRenderer.detect)

    def _source_fn(self, variables, source):
        """[1, H, W, 3] -> (its keypoints, its encoder features): the per-source work."""
        kp = self._detect_fn(variables, source)
        features = self.model.apply(
            variables, source, train=False, method=mr.MaskRenderer.encode_source
        )
        return kp, features

    def _chunk_fn(self, variables, face_model, source, kp_source, source_features, kp_initial,
                  scale, driving, source_coeffs, driving_coeffs, initial_coeffs, *,
                  relative: bool, inputs_3d: dict | None = None):  # fmt: skip
        n = driving.shape[0]
        kp_driving = self._detect_fn(variables, driving)
        if relative:
            kp_driving = _relative(kp_source, kp_driving, kp_initial, scale)
        extra = inputs_3d or {}
        if self.uses_3d and inputs_3d is None:
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
            source_features=_tile(source_features, n),
            train=False,
            method=mr.MaskRenderer.animate,
        )
        return out["prediction"].astype(jnp.float32)

    def frames(
        self,
        variables: dict,
        source: jax.Array,
        driving_initial: jax.Array,
        driving: jax.Array,
        *,
        face_model: mm.MorphableModel | None = None,
        source_coeffs: jax.Array | None = None,
        driving_coeffs: jax.Array | None = None,
        initial_coeffs: jax.Array | None = None,
        inputs_3d: dict | None = None,
    ) -> jax.Array:
        """A stream's whole work for a batch of driving frames as one traceable function of
        arrays (what converters.portable exports): the source's keypoints and features, the
        reference frame's keypoints, then the chunk program; relative motion, scale 1 (with
        `driving_initial` = `source` it is absolute motion, up to float rounding).

        Args:
          source, driving_initial: [H, W, 3] float32 in [0, 1].
          driving: [B, H, W, 3] float32 in [0, 1].
          face_model, source_coeffs [257], driving_coeffs [B, 257], initial_coeffs [257]: the
            3D branch's inputs (3D-branch models), or `inputs_3d`: its outputs
            (`branch_inputs`: motion_3d [B, H, W, 2], coverage_3d [B, H, W], rendered_3d
            [B, H, W, 3]).
        Returns:
          [B, H, W, 3] float32.
        """
        kp_source, features = self._source_fn(variables, source[None])
        kp_initial = self._detect_fn(variables, driving_initial[None])
        return self._chunk_fn(variables, face_model, source, kp_source, features, kp_initial,
                              1.0, driving, source_coeffs, driving_coeffs, initial_coeffs,
                              relative=True, inputs_3d=inputs_3d)  # fmt: skip

    def start(
        self,
        variables: dict,
        source: ArrayLike,
        *,
        face_model: mm.MorphableModel | None = None,
        source_coeffs: ArrayLike | None = None,
        relative: bool = True,
        adapt_movement_scale: bool = False,
    ) -> "Reenactor":
        """Begins a stream: the source's work (its keypoints, its 3DMM coefficients) is done
        here once; then `step(frame)` per driving frame, the first of which is the reference
        of relative mode. Returns self, so `Reenactor(cfg).start(v, source).step(frame)`.

        Args:
          variables: the generator side's {'params', 'batch_stats'} (`mr.init_variables`).
          source: [H, W, 3] float32 in [0, 1], H = W = model image_size.
          face_model, source_coeffs: the 3DMM and the source's [257] coefficients (3D-branch
            models only).
          relative, adapt_movement_scale: as `__call__`.
        """
        source = np.asarray(source, np.float32)
        size = self.image_size
        if source.shape != (size, size, 3):
            raise ValueError(f"need source [{size}, {size}, 3], got {source.shape}")
        if self.uses_3d:
            if face_model is None or source_coeffs is None:
                raise ValueError(
                    "this model uses the 3D branch: pass face_model, source_coeffs [257] and "
                    "driving_coeffs [T, 257]"
                )
            source_coeffs = np.asarray(source_coeffs, np.float32)
            if source_coeffs.shape != (mm.NUM_COEFFS,):
                raise ValueError(f"need source_coeffs [{mm.NUM_COEFFS}], got {source_coeffs.shape}")
        else:
            face_model = source_coeffs = None
        kp_source, features = self._source(variables, source[None])
        self._stream = {
            "variables": variables,
            "face_model": face_model,
            "source": source,
            "kp_source": kp_source,
            "source_features": features,
            "source_coeffs": source_coeffs,
            "relative": bool(relative),
            "adapt": bool(adapt_movement_scale),
            "kp_initial": None,  # set by the first driving frame
            "initial_coeffs": None,
            "scale": np.float32(1.0),
        }
        return self

    def _run(self, frames: np.ndarray, coeffs: np.ndarray | None, batch: int) -> np.ndarray:
        """frames [n <= batch, H, W, 3] through the per-frame program compiled for `batch`."""
        state = getattr(self, "_stream", None)
        if state is None:
            raise RuntimeError("call start(variables, source) before step()")
        size = self.image_size
        if frames.shape[1:] != (size, size, 3):
            raise ValueError(f"need driving frames [{size}, {size}, 3], got {frames.shape[1:]}")
        if self.uses_3d:
            if coeffs is None or np.shape(coeffs) != (len(frames), mm.NUM_COEFFS):
                raise ValueError(
                    f"this model uses the 3D branch: need driving_coeffs [{len(frames)}, "
                    f"{mm.NUM_COEFFS}], got {None if coeffs is None else np.shape(coeffs)}"
                )
            coeffs = np.asarray(coeffs, np.float32)
        else:
            coeffs = None
        if state["kp_initial"] is None:
            state["kp_initial"] = self._detect(state["variables"], frames[:1])
            state["initial_coeffs"] = None if coeffs is None else coeffs[0]
            if state["relative"] and state["adapt"]:
                state["scale"] = np.float32(
                    movement_scale(
                        jax.device_get(state["kp_source"]), jax.device_get(state["kp_initial"])
                    )
                )
        out = self._chunk(
            state["variables"], state["face_model"], state["source"], state["kp_source"],
            state["source_features"], state["kp_initial"], state["scale"],
            _pad_to(frames, batch), state["source_coeffs"],
            None if coeffs is None else _pad_to(coeffs, batch), state["initial_coeffs"],
            relative=state["relative"],
        )  # fmt: skip
        return np.asarray(out)[: len(frames)]

    def step(self, frame: ArrayLike, coeffs: ArrayLike | None = None) -> np.ndarray:
        """One driving frame in, one reenacted frame out (after `start`); fixed shapes, so
        every call after the first reuses one compiled program.

        Args:
          frame: [H, W, 3] float32 in [0, 1]; the stream's first frame is relative mode's
            reference.
          coeffs: [257] its 3DMM coefficients (3D-branch models).
        Returns:
          [H, W, 3] float32 in [0, 1].
        """
        frame = np.asarray(frame, np.float32)[None]
        coeffs = None if coeffs is None else np.asarray(coeffs, np.float32)[None]
        return self._run(frame, coeffs, 1)[0]

    def steps(self, frames: ArrayLike, coeffs: ArrayLike | None = None) -> np.ndarray:
        """`step` over [T, H, W, 3] frames (and [T, 257] coefficients), `chunk_size` frames
        per call of one compiled program (the last chunk padded) -> [T, H, W, 3]."""
        frames = np.asarray(frames, np.float32)
        if frames.ndim != 4 or len(frames) == 0:
            raise ValueError(f"need driving frames [T >= 1, H, W, 3], got {frames.shape}")
        if coeffs is not None:
            coeffs = np.asarray(coeffs, np.float32)
            if coeffs.shape != (len(frames), mm.NUM_COEFFS):
                raise ValueError(
                    f"need driving_coeffs [{len(frames)}, {mm.NUM_COEFFS}], got {coeffs.shape}"
                )
        chunk = self.chunk_size
        return np.concatenate([
            self._run(frames[i : i + chunk], None if coeffs is None else coeffs[i : i + chunk],
                      chunk)
            for i in range(0, len(frames), chunk)
        ])  # fmt: skip

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
        """Animates `source` by `driving` (`start` then `steps`).

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
        driving = np.asarray(driving, np.float32)
        if driving.ndim != 4 or len(driving) == 0:
            raise ValueError(f"need driving [T >= 1, H, W, 3], got {driving.shape}")
        if self.uses_3d and (face_model is None or source_coeffs is None or driving_coeffs is None):
            raise ValueError(
                "this model uses the 3D branch: pass face_model, source_coeffs [257] and "
                "driving_coeffs [T, 257]"
            )
        self.start(variables, source, face_model=face_model, source_coeffs=source_coeffs,
                   relative=relative, adapt_movement_scale=adapt_movement_scale)  # fmt: skip
        try:
            return self.steps(driving, driving_coeffs)
        finally:
            self._stream = None


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
