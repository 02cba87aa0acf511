"""Test glue for the PyTorch networks (converters.maskrenderer_torch): deterministic random
weights, FOMM-style checkpoints, NCHW/NHWC conversions, FOMM's reconstruction forward."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from converters import maskrenderer_torch as mt
from converters.maskrenderer_torch.layers import ResBlock2d


def random_fomm(model, seed: int = 0):
    """(kp_detector, generator, discriminator) torch modules in eval mode, random weights."""
    maskrenderer, discriminator = mt.build(model.to_dict())
    nets = (maskrenderer.kp_detector, maskrenderer.generator, discriminator)
    for i, net in enumerate(nets):
        randomize_(net, seed + i)
    return nets


def checkpoint_of(nets) -> dict:
    """A FOMM-style checkpoint dict (state dicts as numpy-convertible tensors)."""
    kp, gen, disc = nets
    return {
        "kp_detector": kp.state_dict(),
        "generator": gen.state_dict(),
        "discriminator": disc.state_dict(),
        "epoch": 3,
    }


def random_images(batch: int, height: int, width: int, seed: int) -> np.ndarray:
    """[B, H, W, 3] float32 uniform noise in [0, 1]."""
    return np.random.default_rng(seed).uniform(size=(batch, height, width, 3)).astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return np.transpose(x.detach().numpy(), (0, 2, 3, 1))


@torch.no_grad()
def torch_probe(nets, source: np.ndarray, driving: np.ndarray) -> dict[str, np.ndarray]:
    """FOMM's reconstruction forward (absolute keypoints), outputs named as the probe's."""
    kp_det, gen, _ = nets
    s, d = nchw(source), nchw(driving)
    kp_s, kp_d = kp_det(s), kp_det(d)
    out = gen(s, kp_source=kp_s, kp_driving=kp_d)
    return {
        "kp_source_value": kp_s["value"].numpy(),
        "kp_source_jacobian": kp_s["jacobian"].numpy(),
        "kp_driving_value": kp_d["value"].numpy(),
        "kp_driving_jacobian": kp_d["jacobian"].numpy(),
        "deformation": out["deformation"].numpy(),
        "occlusion_map": nhwc(out["occlusion_maps"][0]),
        "prediction": nhwc(out["prediction"]),
        "mask": nhwc(out["mask"]),
        "deformed": nhwc(out["deformed"]),
        "sparse_deformed": np.transpose(out["sparse_deformed"].numpy(), (0, 1, 3, 4, 2)),
    }


_JACOBIAN_WEIGHT_SCALE = 0.1  # keeps random jacobians near identity, hence invertible
_RESIDUAL_SCALE = 0.3  # damps ResBlock2d residual branches (conv2)


@torch.no_grad()
def randomize_(module, seed):
    """Deterministically fill all parameters and BatchNorm statistics with random values.

    * Conv weights ~ N(0, 2 / fan_in) (He scale, keeps ReLU activations O(1));
      output heads (kp, jacobian, mask, occlusion, final, discriminator conv) use
      N(0, 1 / fan_in) and ResBlock2d.conv2 is further scaled by 0.3 so the residual
      bottleneck does not grow; conv biases ~ U(-0.1, 0.1);
    * BatchNorm / InstanceNorm affine weight ~ U(0.5, 1.5), bias ~ U(-0.1, 0.1);
      BatchNorm running_mean ~ U(-0.1, 0.1), running_var ~ U(0.5, 1.5);
    * spectral-norm convs: weight_orig as above; weight_v / weight_u are set by one
      power-iteration step from a random unit u (v = W^T u / |.|, u = W v / |.|),
      i.e. unit-norm, not converged, and giving sigma = u.W v = |W v| > 0;
    * KPDetector jacobian heads stay random (not FOMM's zero init): weight is scaled
      by 0.1 and the bias is identity [1, 0, 0, 1] + U(-0.1, 0.1), so the jacobians
      are non-trivial but well conditioned (DenseMotion inverts them);
    * the AntiAliasInterpolation2d ``weight`` buffer (fixed Gaussian) is untouched.
    Returns `module`.
    """
    gen = torch.Generator().manual_seed(int(seed))

    def normal(shape, std):
        return torch.randn(shape, generator=gen) * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    # Output heads (no ReLU after them) get gain 1 instead of 2; residual branches are
    # damped so that six stacked ResBlock2d's do not blow the activations up.
    jacobian_convs, head_convs, residual_convs = set(), set(), set()
    for m in module.modules():
        if isinstance(m, mt.KPDetector):
            head_convs.add(id(m.kp))
            if m.jacobian is not None:
                jacobian_convs.add(id(m.jacobian))
        elif isinstance(m, mt.DenseMotionNetwork):
            occlusion = m.occlusion if isinstance(m.occlusion, nn.ModuleList) else [m.occlusion]
            head_convs.update(id(c) for c in (m.mask, *occlusion) if c is not None)
        elif isinstance(m, mt.OcclusionAwareGenerator):
            head_convs.add(id(m.final))
        elif isinstance(m, mt.Discriminator):
            head_convs.add(id(m.conv))
        elif isinstance(m, ResBlock2d):
            residual_convs.add(id(m.conv2))
    head_convs |= jacobian_convs

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            sn = hasattr(m, "weight_orig")
            w = m.weight_orig if sn else m.weight
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            gain = 1.0 if id(m) in head_convs else 2.0
            std = math.sqrt(gain / fan_in) * (_RESIDUAL_SCALE if id(m) in residual_convs else 1.0)
            w.copy_(normal(w.shape, std))
            if m.bias is not None:
                m.bias.copy_(uniform(m.bias.shape, -0.1, 0.1))
            if id(m) in jacobian_convs:
                w.mul_(_JACOBIAN_WEIGHT_SCALE)
                n_maps = m.bias.shape[0] // 4
                m.bias.add_(torch.tensor([1.0, 0.0, 0.0, 1.0] * n_maps))
            if sn:
                w_mat = w.reshape(w.shape[0], -1)
                u = F.normalize(normal(m.weight_u.shape, 1.0), dim=0)
                v = F.normalize(w_mat.t() @ u, dim=0)
                u = F.normalize(w_mat @ v, dim=0)
                m.weight_u.copy_(u)
                m.weight_v.copy_(v)
                # keep the cached `weight` attribute consistent with the new values
                m.weight = w / torch.dot(u, w_mat @ v)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            if m.weight is not None:
                m.weight.copy_(uniform(m.weight.shape, 0.5, 1.5))
                m.bias.copy_(uniform(m.bias.shape, -0.1, 0.1))
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(uniform(m.running_mean.shape, -0.1, 0.1))
                m.running_var.copy_(uniform(m.running_var.shape, 0.5, 1.5))
        elif isinstance(m, nn.Linear):  # not used by FOMM; handled for completeness
            m.weight.copy_(normal(m.weight.shape, math.sqrt(1.0 / m.weight.shape[1])))
            if m.bias is not None:
                m.bias.copy_(uniform(m.bias.shape, -0.1, 0.1))
    return module
