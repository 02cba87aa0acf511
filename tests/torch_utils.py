"""Glue between the project's configs and the PyTorch reference modules in fomm_torch.py."""

import fomm_torch
import numpy as np
import torch


def fomm_model_params(model) -> dict:
    """A FOMM yaml `model_params` dict equivalent to a config's FOMM-shaped `model` section."""
    kp, dm, gen, disc = model.kp_detector, model.dense_motion, model.generator, model.discriminator
    return {
        "common_params": {
            "num_kp": model.num_kp,
            "num_channels": 3,
            "estimate_jacobian": kp.estimate_jacobian,
        },
        "kp_detector_params": {
            k: kp[k]
            for k in (
                "temperature",
                "block_expansion",
                "max_features",
                "scale_factor",
                "num_blocks",
                "single_jacobian_map",
                "pad",
            )
        },
        "generator_params": {
            **{
                k: gen[k]
                for k in (
                    "block_expansion",
                    "max_features",
                    "num_down_blocks",
                    "num_bottleneck_blocks",
                )
            },
            "estimate_occlusion_map": dm.estimate_occlusion_map,
            "dense_motion_params": {
                k: dm[k]
                for k in (
                    "block_expansion",
                    "max_features",
                    "num_blocks",
                    "scale_factor",
                    "kp_variance",
                )
            },
        },
        "discriminator_params": {
            "scales": list(disc.scales),
            "use_kp": disc.use_kp,
            **{
                k: disc[k]
                for k in ("block_expansion", "max_features", "num_blocks", "sn", "kp_variance")
            },
        },
    }


def random_fomm(model, seed: int = 0):
    """(kp_detector, generator, discriminator) torch modules in eval mode, random weights."""
    nets = fomm_torch.build_fomm(fomm_model_params(model))
    for i, net in enumerate(nets):
        fomm_torch.randomize_(net, seed + i)
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
        "occlusion_map": nhwc(out["occlusion_map"]),
        "prediction": nhwc(out["prediction"]),
        "mask": nhwc(out["mask"]),
        "deformed": nhwc(out["deformed"]),
        "sparse_deformed": np.transpose(out["sparse_deformed"].numpy(), (0, 1, 3, 4, 2)),
    }
