"""PyTorch mirror of FOMM's training losses (first-order-model `modules/model.py`): the
ImagePyramide, the random TPS `Transform` (with its parameters passed in rather than drawn
from torch's RNG), the equivariance terms, the perceptual pyramid, LSGAN and feature matching.

Written from the published code; used by tests/test_losses.py as ground truth. NCHW, float32.
As in converters/maskrenderer_torch/, `grid_sample` passes align_corners=True (FOMM's torch 1.0
behaviour).
"""

import torch
import torch.nn.functional as F
from torch.autograd import grad

from converters.maskrenderer_torch.layers import AntiAliasInterpolation2d, make_coordinate_grid


class ImagePyramide(torch.nn.Module):
    def __init__(self, scales, num_channels):
        super().__init__()
        self.downs = torch.nn.ModuleDict(
            {str(s).replace(".", "-"): AntiAliasInterpolation2d(num_channels, s) for s in scales}
        )

    def forward(self, x):
        return {"prediction_" + k.replace("-", "."): down(x) for k, down in self.downs.items()}


class Transform:
    """FOMM's Transform; `theta` [B, 2, 3] and `control_params` [B, 1, P] given explicitly."""

    def __init__(self, theta, control_params=None, points_tps=None):
        self.theta = theta
        self.bs = theta.shape[0]
        self.tps = control_params is not None
        if self.tps:
            grid = make_coordinate_grid((points_tps, points_tps), dtype=theta.dtype)
            self.control_points = grid.unsqueeze(0)
            self.control_params = control_params

    def transform_frame(self, frame):
        grid = make_coordinate_grid(frame.shape[2:], dtype=frame.dtype).unsqueeze(0)
        grid = grid.view(1, frame.shape[2] * frame.shape[3], 2)
        grid = self.warp_coordinates(grid).view(self.bs, frame.shape[2], frame.shape[3], 2)
        return F.grid_sample(frame, grid, padding_mode="reflection", align_corners=True)

    def warp_coordinates(self, coordinates):
        theta = self.theta.unsqueeze(1)
        transformed = (
            torch.matmul(theta[:, :, :, :2], coordinates.unsqueeze(-1)) + theta[:, :, :, 2:]
        )
        transformed = transformed.squeeze(-1)
        if self.tps:
            distances = coordinates.view(coordinates.shape[0], -1, 1, 2) - self.control_points.view(
                1, 1, -1, 2
            )
            distances = torch.abs(distances).sum(-1)
            result = distances**2
            result = result * torch.log(distances + 1e-6)
            result = result * self.control_params
            result = result.sum(dim=2).view(self.bs, coordinates.shape[1], 1)
            transformed = transformed + result
        return transformed

    def jacobian(self, coordinates):
        new_coordinates = self.warp_coordinates(coordinates)
        grad_x = grad(new_coordinates[..., 0].sum(), coordinates, create_graph=True)
        grad_y = grad(new_coordinates[..., 1].sum(), coordinates, create_graph=True)
        return torch.cat([grad_x[0].unsqueeze(-2), grad_y[0].unsqueeze(-2)], dim=-2)


def equivariance_losses(kp_driving, transformed_kp, transform):
    """GeneratorFullModel's equivariance_value / equivariance_jacobian, unweighted."""
    value = torch.abs(kp_driving["value"] - transform.warp_coordinates(transformed_kp["value"]))
    jacobian_transformed = torch.matmul(
        transform.jacobian(transformed_kp["value"]), transformed_kp["jacobian"]
    )
    normed = torch.matmul(torch.inverse(kp_driving["jacobian"]), jacobian_transformed)
    eye = torch.eye(2).view(1, 1, 2, 2)
    return value.mean(), torch.abs(eye - normed).mean()


def perceptual_loss(vgg, pyramid, prediction, target, scales, weights):
    pyr_gen, pyr_real = pyramid(prediction), pyramid(target)
    value_total = 0
    for scale in scales:
        x_vgg = vgg(pyr_gen["prediction_" + str(scale)])
        y_vgg = vgg(pyr_real["prediction_" + str(scale)])
        for i, _ in enumerate(weights):
            value = torch.abs(x_vgg[i] - y_vgg[i].detach()).mean()
            value_total += weights[i] * value
    return value_total


def generator_gan_loss(maps_generated, scales):
    total = 0
    for scale in scales:
        total += ((1 - maps_generated[f"prediction_map_{scale}"]) ** 2).mean()
    return total


def discriminator_gan_loss(maps_real, maps_generated, scales):
    total = 0
    for scale in scales:
        key = f"prediction_map_{scale}"
        total += ((1 - maps_real[key]) ** 2 + maps_generated[key] ** 2).mean()
    return total


def feature_matching_loss(maps_real, maps_generated, scales, weights):
    total = 0
    for scale in scales:
        key = f"feature_maps_{scale}"
        for i, (a, b) in enumerate(zip(maps_real[key], maps_generated[key], strict=True)):
            if weights[i] == 0:
                continue
            total += weights[i] * torch.abs(a - b).mean()
    return total
