"""FOMM configured networks vs the PyTorch reference (converters/maskrenderer_torch) with random
weights, through the FOMM converter: every probe output to 1e-4."""

import jax
import numpy as np
import pytest
import torch

from configs import fomm_vox256, tiny
from converters import fomm
from maskrenderer_jax.models import maskrenderer as mr
from tests import torch_utils

ATOL = 1e-4


def images(batch, size, seed):
    rng = np.random.default_rng(seed)
    # Smooth random images: a few blobs, so keypoint softmaxes are not degenerate.
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((batch, size, size, 3), np.float32)
    for b in range(batch):
        for _ in range(6):
            cx, cy, r = rng.uniform(0.1, 0.9, 2).tolist() + [rng.uniform(0.05, 0.3)]
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
            out[b] += blob[..., None] * rng.uniform(0, 1, 3)
    return np.clip(out / out.max() + rng.normal(0, 0.02, out.shape), 0, 1).astype(np.float32)


def run_parity(model_config, batch, seed):
    nets = torch_utils.random_fomm(model_config, seed)
    networks = fomm.import_checkpoint(torch_utils.checkpoint_of(nets), model_config)
    size = model_config.image_size
    source, driving = images(batch, size, seed), images(batch, size, seed + 100)
    expected = torch_utils.torch_probe(nets, source, driving)

    model = mr.build_model(model_config)
    out = jax.jit(lambda v, s, d: model.apply(v, s, d, train=False))(
        networks["model"], source, driving
    )
    got = fomm.probe(model_config, networks["model"], source, driving)
    got.update(mask=out["mask"], deformed=out["deformed"], sparse_deformed=out["sparse_deformed"])
    assert set(expected) <= set(got)
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(got[key]), value, atol=ATOL, rtol=0, err_msg=key)
    # The probe is meaningful only if the random model is not degenerate.
    assert np.std(expected["prediction"]) > 1e-2
    assert np.std(expected["kp_source_value"]) > 1e-2
    return nets, networks


def test_tiny_fomm_matches_torch():
    run_parity(tiny.get_config("fomm").model, batch=2, seed=0)


@pytest.mark.slow
def test_vox256_fomm_matches_torch():
    run_parity(fomm_vox256.get_config().model, batch=1, seed=1)


@pytest.mark.parametrize("train", [False, True])
def test_discriminator_matches_torch(train):
    model_config = tiny.get_config("fomm").model
    nets = torch_utils.random_fomm(model_config, seed=3)
    networks = fomm.import_checkpoint(torch_utils.checkpoint_of(nets), model_config)
    image = images(2, model_config.image_size, 7)
    disc = nets[2].train(train)
    with torch.no_grad():
        expected = disc({"prediction_1": torch_utils.nchw(image)})
    out, state = mr.build_discriminator(model_config).apply(
        networks["discriminator"], {"prediction_1": image}, train=train, mutable=["batch_stats"]
    )
    for i, fmap in enumerate(expected["feature_maps_1"]):
        np.testing.assert_allclose(out["feature_maps_1"][i], torch_utils.nhwc(fmap), atol=ATOL)
    np.testing.assert_allclose(
        out["prediction_map_1"], torch_utils.nhwc(expected["prediction_map_1"]), atol=ATOL
    )
    # Training runs one power iteration and stores u, v as torch does.
    after = fomm.export_checkpoint(
        {"model": networks["model"], "discriminator": state}, model_config
    )["discriminator"]
    for key, value in disc.state_dict().items():
        if key.endswith(("weight_u", "weight_v")):
            np.testing.assert_allclose(after[key], value.numpy(), atol=1e-5, err_msg=key)
