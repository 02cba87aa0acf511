"""Deep3DFace's coefficient regressor (ReconNetWrapper of sicxu/Deep3DFaceRecon_pytorch,
models/networks.py) and the image preprocessing that feeds it.

`ReconNet`: torchvision ResNet-50 without fc (`backbone`), the 2048-d pooled feature as a
[B, 1, 1, 2048] map, seven 1x1 conv heads `final_layers_{0..6}` (id 80, exp 64, tex 80,
angle 3, gamma 27, (tx, ty) 2, tz 1), concatenated in that order to the 257 coefficients that
morphable_model.COEFF_GROUPS splits. The published network takes 224x224 RGB in [0, 1] with no
mean/std normalisation.

Two ways to make its input:
- `align_five_landmarks`: Deep3DFace's own `align_img` (util/preprocess.py) from five facial
  landmarks: the distribution the network was trained on, and the camera it assumes (focal
  1015, centre 112 at 224 px).
- `preprocess_fomm_crop`: a plain resize of a FOMM 256x256 crop. FOMM's crops are looser and
  not landmark-aligned, so the face is smaller and less centred than in training, and the
  coefficients describe the face in *this* 224 frame. Rendering them back at 256 px is a pure
  rescale of the camera: focal and centre x 256/224 (morphable_model.camera_for_size(256) =
  (1160, 128)), the field of view unchanged.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskrenderer_jax.face3d.morphable_model import NUM_COEFFS
from maskrenderer_jax.nets.resnet import ResNet50

Dtype = Any
# Output channels of final_layers.{0..6}: id, exp, tex, angle, gamma, (tx, ty), tz.
HEAD_FEATURES = (80, 64, 80, 3, 27, 2, 1)
assert sum(HEAD_FEATURES) == NUM_COEFFS
INPUT_SIZE = 224
FOMM_SIZE = 256

# The 5-point standard face (left eye, right eye, nose tip, left and right mouth corners; x
# right, y up, z to the viewer) that Deep3DFace's `load_lm3d` derives from BFM/
# similarity_Lm3D_all.mat: 68-point indices 31, mean(37, 40), mean(43, 46), 49, 55 (1-based),
# reordered [1, 2, 0, 3, 4]. `five_point_landmarks` derives it from the .mat's `lm` likewise.
STANDARD_LANDMARKS_3D = np.array(
    [
        [-0.31148657, 0.29036078, 0.13377953],
        [0.30979887, 0.28972036, 0.13179526],
        [0.0032535, -0.04617932, 0.55244243],
        [-0.25216928, -0.38133916, 0.22405732],
        [0.2484662, -0.38128236, 0.22235769],
    ],
    np.float32,
)


class ReconNet(nn.Module):
    """Deep3DFace's ReconNetWrapper('resnet50', use_last_fc=False)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        """Regresses 3DMM coefficients.

        Args:
          images: [B, H, W, 3] RGB float32 in [0, 1]; 224x224 aligned faces for the published
            weights (the network is convolutional up to the pooling, so any H, W runs).
          train: BatchNorm on batch statistics (Deep3DFace is frozen in MaskRenderer: False).
        Returns:
          [B, 257] float32: id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3.
        """
        pooled = ResNet50(dtype=self.dtype, param_dtype=self.param_dtype, name="backbone")(
            images, train=train
        )
        x = pooled[:, None, None, :]  # torch keeps AdaptiveAvgPool2d's [B, 2048, 1, 1]
        heads = [
            # Heads stay float32: their outputs are 3DMM geometry. Zero init, as the reference
            # (the network starts at the mean face, frontal, at the origin).
            nn.Conv(
                n,
                (1, 1),
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros,
                name=f"final_layers_{i}",
            )(x)
            for i, n in enumerate(HEAD_FEATURES)
        ]
        return jnp.concatenate(heads, axis=-1).reshape(x.shape[0], NUM_COEFFS)


def preprocess_fomm_crop(images: jax.Array) -> jax.Array:
    """FOMM 256x256 crops -> ReconNet input, by resizing (no landmark alignment).

    Bicubic with antialiasing (PIL's BICUBIC, which Deep3DFace's alignment resizes with),
    clipped back to [0, 1]. See the module docstring for what this does to the camera.

    Args:
      images: [B, 256, 256, 3] float32 in [0, 1] (any square size works).
    Returns:
      [B, 224, 224, 3] float32 in [0, 1].
    """
    b, _, _, c = images.shape
    out = jax.image.resize(
        images.astype(jnp.float32), (b, INPUT_SIZE, INPUT_SIZE, c), "cubic", antialias=True
    )
    return jnp.clip(out, 0.0, 1.0)


class AlignedFace(NamedTuple):
    """Output of `align_five_landmarks`."""

    image: np.ndarray  # [S, S, 3] float32 in [0, 1], S = target_size
    landmarks: np.ndarray  # [N, 2] the input landmarks in the crop's pixels (x right, y down)
    trans_params: np.ndarray  # [5] float64 (w0, h0, s, tx, ty) as Deep3DFace's align_img


def five_point_landmarks(landmarks68: np.ndarray) -> np.ndarray:
    """Deep3DFace's extract_5p / load_lm3d selection: [68, D] -> [5, D] (eyes, nose, mouth).

    Use it on a 68-point detection or on similarity_Lm3D_all.mat's `lm` (which gives
    STANDARD_LANDMARKS_3D).
    """
    lm = np.asarray(landmarks68)
    if lm.shape[0] != 68:
        raise ValueError(f"expected 68 landmarks; got {lm.shape}")
    idx = np.array([31, 37, 40, 43, 46, 49, 55]) - 1
    five = np.stack(
        [lm[idx[0]], lm[idx[[1, 2]]].mean(0), lm[idx[[3, 4]]].mean(0), lm[idx[5]], lm[idx[6]]]
    )
    return five[[1, 2, 0, 3, 4]]


def _pos(points2d: np.ndarray, points3d: np.ndarray) -> tuple[np.ndarray, float]:
    """Deep3DFace's POS: least-squares affine camera [5, 2] ~ [5, 3] -> (t [2], scale)."""
    n = points2d.shape[0]
    a = np.zeros((2 * n, 8))
    a[0::2, 0:3], a[0::2, 3] = points3d, 1
    a[1::2, 4:7], a[1::2, 7] = points3d, 1
    k = np.linalg.lstsq(a, points2d.reshape(2 * n), rcond=None)[0]
    scale = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    return np.array([k[3], k[7]]), float(scale)


def align_five_landmarks(
    image: np.ndarray,
    landmarks: np.ndarray,
    template: np.ndarray = STANDARD_LANDMARKS_3D,
    *,
    target_size: int = INPUT_SIZE,
    rescale_factor: float = 102.0,
) -> AlignedFace:
    """Deep3DFace's align_img: scale and crop so the landmarks fit the standard face.

    Fits an affine camera to the five points (`POS`), sets s = rescale_factor / its scale,
    resizes the image to (int(W s), int(H s)) and crops target_size around the fitted centre,
    with the reference's integer truncations; outside the image reads 0 (PIL's crop). The
    resampling is bicubic with antialiasing in float (PIL works in uint8, so pixel values
    differ from the reference by about 1/255). Host-side, one image: the crop offsets depend on
    the data, so this is not jit-able.

    Args:
      image: [H, W, 3] float in [0, 1].
      landmarks: [5, 2] or [68, 2] pixels (x right, y down, pixel centres at integers), as a
        detector gives them; 68 points are reduced with `five_point_landmarks` for the fit.
        Deep3DFace flips y (H - 1 - y) before aligning; this does so internally.
      template: [5, 3] standard 3D landmarks (x right, y up).
    Returns:
      AlignedFace(image [S, S, 3] float32 in [0, 1], landmarks [N, 2] in the crop (x right,
      y down: S - 1 - Deep3DFace's y-up `lm_new`), trans_params (w0, h0, s, tx, ty) with t in
      the y-up frame, exactly as the reference returns them).
    """
    image = np.asarray(image, np.float32)
    h0, w0 = image.shape[:2]
    lm = np.asarray(landmarks, np.float64).copy()
    lm[:, 1] = h0 - 1 - lm[:, 1]
    lm5 = lm if lm.shape[0] == 5 else five_point_landmarks(lm)
    t, scale = _pos(lm5, np.asarray(template, np.float64))
    s = rescale_factor / scale

    # resize_n_crop_img, with numpy's int32 casts (truncation towards zero).
    w, h = int(np.int32(w0 * s)), int(np.int32(h0 * s))
    half = target_size / 2
    left = int(np.int32(w / 2 - half + (t[0] - w0 / 2) * s))
    up = int(np.int32(h / 2 - half + (h0 / 2 - t[1]) * s))
    # PIL resize((w, h)) then crop((left, up, left + S, up + S)) in one resampling: output
    # pixel v reads input (v + up + 0.5) h0 / h - 0.5 (pixel-centre convention of both).
    aligned = jax.image.scale_and_translate(
        jnp.asarray(image),
        (target_size, target_size, image.shape[2]),
        (0, 1),
        jnp.array([h / h0, w / w0], jnp.float32),
        jnp.array([-up, -left], jnp.float32),
        "cubic",
        antialias=True,
    )
    aligned = np.clip(np.asarray(aligned), 0.0, 1.0)

    # The reference moves the landmarks with the unrounded transform (sub-pixel offsets from
    # the image's integer crop are the reference's own).
    lm_new = (lm - t + np.array([w0 / 2, h0 / 2])) * s - np.array([w / 2 - half, h / 2 - half])
    lm_new[:, 1] = target_size - 1 - lm_new[:, 1]
    trans_params = np.array([w0, h0, s, t[0], t[1]], np.float64)
    return AlignedFace(aligned.astype(np.float32), lm_new.astype(np.float32), trans_params)
