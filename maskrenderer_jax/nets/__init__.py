"""Frozen backbones used by the 3D branch, losses and metrics (ResNet-50, ...)."""

from maskrenderer_jax.nets.resnet import Bottleneck, ResNet50

__all__ = ["Bottleneck", "ResNet50"]
