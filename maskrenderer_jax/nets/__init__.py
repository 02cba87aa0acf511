"""Frozen backbones used by the 3D branch, losses and metrics (ResNet-50, VGG19, VGGFace2)."""

from maskrenderer_jax.nets.resnet import Bottleneck, ResNet50
from maskrenderer_jax.nets.vgg19 import Vgg19
from maskrenderer_jax.nets.vggface2 import VGGFace2

__all__ = ["Bottleneck", "ResNet50", "VGGFace2", "Vgg19"]
