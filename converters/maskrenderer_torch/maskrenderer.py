"""MaskRenderer wired in PyTorch (keypoint detector + generator, which owns the dense motion),
built from a config's `model` section and loaded from `python -m converters.export` files."""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from converters.export_format import DISCRIMINATOR, export_config, read_export
from converters.maskrenderer_torch.discriminator import MultiScaleDiscriminator
from converters.maskrenderer_torch.generator import OcclusionAwareGenerator
from converters.maskrenderer_torch.keypoints import KPDetector


class MaskRenderer(nn.Module):
    """`kp_detector` and `generator`: their state-dict keys are the export's tensor names."""

    def __init__(self, kp_detector: KPDetector, generator: OcclusionAwareGenerator):
        super().__init__()
        self.kp_detector = kp_detector
        self.generator = generator

    @property
    def uses_3d(self) -> bool:
        return self.generator.dense_motion_network.num_extra_motions > 0

    def animate(self, source, kp_source, kp_driving, motion_3d=None, coverage_3d=None,
                rendered_3d=None) -> dict:  # fmt: skip
        """Renders `source` moved from `kp_source` to `kp_driving` (see forward)."""
        given = [x is not None for x in (motion_3d, rendered_3d)]
        if any(given) != self.uses_3d or any(given) != all(given):
            raise ValueError(
                "this model takes motion_3d [B, H, W, 2] and rendered_3d [B, 3, H, W] (the 3D "
                "branch's outputs)"
                if self.uses_3d
                else "this model has no 3D inputs"
            )
        return self.generator(
            source,
            kp_driving=kp_driving,
            kp_source=kp_source,
            extra_motions=None if motion_3d is None else motion_3d[:, None],
            extra_motion_weights=None if coverage_3d is None else coverage_3d[:, None],
            extra_inputs=rendered_3d,
        )

    def forward(self, source, driving, motion_3d=None, coverage_3d=None, rendered_3d=None):
        """Reenacts `source` with the pose and expression of `driving`.

        Args:
          source, driving: [B, 3, H, W] float32 in [0, 1].
          motion_3d: [B, H, W, 2] M_3D: for each driving pixel, the source position of the same
            face surface point ((x, y) in [-1, 1], grid_sample's convention).
          coverage_3d: [B, H, W] in [0, 1], where M_3D is valid.
          rendered_3d: [B, 3, H, W] in [0, 1], the reenacted 3D face.
        Returns:
          {'kp_source', 'kp_driving'} and the generator's outputs: 'prediction' [B, 3, H, W],
          'deformation' [B, h, w, 2], 'mask' [B, M, h, w], 'occlusion_maps', 'sparse_deformed',
          'deformed', 'warped_features'.
        """
        kp_source, kp_driving = self.kp_detector(source), self.kp_detector(driving)
        out = self.animate(source, kp_source, kp_driving, motion_3d, coverage_3d, rendered_3d)
        return {"kp_source": kp_source, "kp_driving": kp_driving, **out}


def build(model_config: dict) -> tuple[MaskRenderer, MultiScaleDiscriminator]:
    """The networks of a config's `model` section (a dict, e.g. the export's `config`
    metadata), in eval mode. FOMM is the configuration without MaskRenderer's extras."""
    num_kp = model_config["num_kp"]
    kp_detector = KPDetector(num_kp=num_kp, num_channels=3, **model_config["kp_detector"])
    dense_motion = dict(model_config["dense_motion"])
    estimate_occlusion_map = dense_motion.pop("estimate_occlusion_map")
    # The 3D branch gives the rendered face (RGB) beside its motion M_3D.
    dense_motion["num_extra_input_channels"] = 3 if dense_motion["num_extra_motions"] else 0
    generator = OcclusionAwareGenerator(
        num_channels=3,
        num_kp=num_kp,
        dense_motion_params=dense_motion,
        estimate_occlusion_map=estimate_occlusion_map,
        **model_config["generator"],
    )
    discriminator = MultiScaleDiscriminator(num_kp=num_kp, **model_config["discriminator"])
    return MaskRenderer(kp_detector, generator).eval(), discriminator.eval()


class Exported(NamedTuple):
    model: MaskRenderer
    discriminator: MultiScaleDiscriminator | None  # None when the export has none
    config: dict  # the model section the networks were built from


def load(path: str | Path) -> Exported:
    """The networks of an export (`python -m converters.export`), built from its config and
    loaded with strict=True. Raises ValueError naming the file and every missing, unexpected
    or misshapen tensor."""
    tensors, metadata = read_export(path)
    config = export_config(metadata, str(path))
    model, discriminator = build(config)
    if DISCRIMINATOR not in metadata.get("networks", "").split(","):
        discriminator = None
    prefix = DISCRIMINATOR + "."
    parts = [(model, "", {}), (discriminator, prefix, {})]
    for key, value in tensors.items():
        _, name, state = parts[1] if discriminator and key.startswith(prefix) else parts[0]
        state[key[len(name) :]] = value
    parts = [part for part in parts if part[0] is not None]
    problems = [p for module, name, state in parts for p in _mismatches(module, state, name)]
    if problems:
        raise ValueError(
            f"{path} does not fit the networks of its config ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    for module, _, state in parts:
        module.load_state_dict({k: _tensor(v) for k, v in state.items()}, strict=True)
    return Exported(model, discriminator, config)


def _tensor(value: np.ndarray) -> torch.Tensor:
    """bfloat16 (a --dtype bfloat16 export) widened exactly to the modules' float32."""
    if value.dtype.name == "bfloat16":
        value = value.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(value))


def _mismatches(module: nn.Module, state: dict, prefix: str) -> list[str]:
    expected = module.state_dict()
    problems = [
        f"missing {prefix}{k} {tuple(v.shape)}" for k, v in expected.items() if k not in state
    ]
    problems += [
        f"unexpected {prefix}{k} {tuple(v.shape)}" for k, v in state.items() if k not in expected
    ]
    problems += [
        f"{prefix}{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return problems
