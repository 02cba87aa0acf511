"""VGGFace2 face-identity embedding: resnet50_ft of cydonia999/VGGFace2-pytorch.

The network is the Caffe-style ResNet-50 of nets/resnet.py (`ResNet50(caffe=True)`: stride on
each downsampling block's first 1x1 conv, MaxPool2d(3, 2, ceil_mode=True)), trained on 8631
identities. Its variables sit at the top level (`conv1`, `layer1_0/...`) as the PyTorch
state-dict keys of the published pickle (`conv1.weight`, `layer1.0.conv1.weight`, ...); the
classifier `fc` is not part of the model (converters/vggface2.py drops it explicitly).

Embedding = the 2048-d average-pooled layer4 (the reference's AvgPool2d(7) on the 7x7 map at
224 input, flattened as its extractor.py does), L2-normalised here for cosine similarity.

Preprocessing follows the reference (datasets/vgg_face2.py): Resize(256) of the shorter side,
CenterCrop(224), 0-255, RGB -> BGR, minus the Caffe mean BGR (91.4953, 103.8827, 131.0912), no
std. For FOMM's 256x256 crops the resize is the identity and the centre crop drops 16 px per
side, exactly as the reference treats a 256 px image: no resampling blur, and the face of a
loose FOMM crop stays inside. Other sizes are resized (antialiased bilinear, close to but not
bit-equal with PIL's). `crop=False` resizes the whole frame to 224 instead.

Without converted weights (`python -m converters.vggface2`), `init_random` gives a randomly
initialised network and identity losses/metrics are meaningless: callers must say so with
`warn_random_weights`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.nets import random_weights
from maskrenderer_jax.nets.resnet import FEATURES, ResNet50

Dtype = Any

INPUT_SIZE = 224
RESIZE_SIZE = 256  # the reference resizes the shorter side to 256, then centre-crops 224
MEAN_BGR = (91.4953, 103.8827, 131.0912)  # resnet50_ft.prototxt, 0-255 BGR
NUM_CLASSES = 8631  # identities of the VGGFace2 training split (the dropped `fc`)
EMBEDDING_SIZE = FEATURES  # 2048


def preprocess(images: jax.Array, *, crop: bool = True, size: int = INPUT_SIZE) -> jax.Array:
    """RGB images in [0, 1] -> resnet50_ft input.

    Args:
      images: [B, H, W, 3] float RGB in [0, 1]; FOMM's 256x256 crops, or any size.
      crop: the reference's Resize(256) + CenterCrop(224) (see the module docstring); False
        resizes the whole frame to size x size.
      size: the input size without crop (the published weights expect 224; smaller sizes
        cost less and run, as the network pools globally, e.g. for CPU demos).
    Returns:
      [B, 224, 224, 3] (crop) or [B, size, size, 3] float32 BGR, 0-255 minus MEAN_BGR.
    """
    x = images.astype(jnp.float32)
    b, h, w, c = x.shape
    if crop:
        # torchvision Resize(int): shorter side -> 256, the other int(256 * long / short).
        short, long = min(h, w), max(h, w)
        size = (RESIZE_SIZE, int(RESIZE_SIZE * long / short))
        size = size if h <= w else size[::-1]
        if size != (h, w):
            x = jax.image.resize(x, (b, *size, c), "linear", antialias=True)
        # torchvision CenterCrop: offset round((size - 224) / 2).
        top = int(round((size[0] - INPUT_SIZE) / 2.0))
        left = int(round((size[1] - INPUT_SIZE) / 2.0))
        x = x[:, top : top + INPUT_SIZE, left : left + INPUT_SIZE]
    elif (h, w) != (size, size):
        x = jax.image.resize(x, (b, size, size, c), "linear", antialias=True)
    # The reference works on uint8 PIL images; [0, 1] floats are scaled instead of rounded.
    return x[..., ::-1] * 255.0 - jnp.asarray(MEAN_BGR, jnp.float32)


class VGGFace2(nn.Module):
    """resnet50_ft trunk; variables at the top level, named as the reference's state dict."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.resnet = ResNet50(caffe=True, dtype=self.dtype, param_dtype=self.param_dtype)
        # No `resnet/` prefix: the variables map one to one onto the pickle's key names.
        nn.share_scope(self, self.resnet)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Pooled features of preprocessed images (inference BatchNorm; the net is frozen).

        Args:
          x: [B, H, W, 3] float32 from `preprocess` (224x224 for the published weights; any
            size >= 32 runs).
        Returns:
          [B, 2048] float32, not normalised (the reference's flattened AvgPool2d(7) output).
        """
        return self.resnet(x, train=False)

    def embed(self, images: jax.Array, *, crop: bool = True, size: int = INPUT_SIZE) -> jax.Array:
        """Identity embeddings of RGB images.

        Args:
          images: [B, H, W, 3] float RGB in [0, 1] (FOMM's 256x256 crops).
          crop, size: see `preprocess`.
        Returns:
          [B, 2048] float32, L2-normalised (cosine similarity = dot product).
        """
        return l2_normalize(self(preprocess(images, crop=crop, size=size)))


def l2_normalize(features: jax.Array) -> jax.Array:
    """[B, D] -> [B, D] unit rows (cosine similarity = dot product)."""
    # eps keeps the gradient finite for an all-zero feature (possible with random weights).
    return features / jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True) + 1e-12)


def embed(variables: dict, images: jax.Array, *, crop: bool = True) -> jax.Array:
    """`VGGFace2().embed` with `variables` ({'params', 'batch_stats'}): [B, 2048] unit norm."""
    return VGGFace2().apply(variables, images, crop=crop, method=VGGFace2.embed)


def init_random(rng: jax.Array, *, param_dtype: Dtype = jnp.float32) -> dict:
    """Randomly initialised {'params', 'batch_stats'} (flax's default initialisers).

    Only for running without converted weights: call `warn_random_weights` alongside.
    """
    model = VGGFace2(param_dtype=param_dtype)
    # The parameters do not depend on the input size; a small input keeps init cheap, and
    # eager init skips compiling a graph that runs once.
    return model.init(rng, jnp.zeros((1, 32, 32, 3), jnp.float32))


def warn_random_weights() -> str:
    """Logs (logging.WARNING) and returns the message that resnet50_ft runs on random weights."""
    return random_weights.warn_random_weights(
        "VGGFace2 resnet50_ft",
        "converters.vggface2",
        "the identity loss and identity metrics are then meaningless.",
    )
