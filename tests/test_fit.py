"""Differentiability of the 3D branch: fitting coefficients through the renderer recovers them."""

import jax
import numpy as np

from maskrenderer_jax.face3d import fit, render, synthetic_bfm


def test_fit_recovers_pose_and_image():
    model = synthetic_bfm.synthetic_bfm(seed=0)
    size = 96
    target = fit.random_target(seed=3)
    goal = jax.jit(render.render, static_argnames=("image_size", "antialias"))(
        model, target, image_size=size
    )
    start = fit.neutral_start(target)
    coeffs, history = fit.fit_coefficients(
        model, goal["image"], goal["landmarks"], start, image_size=size, steps=250
    )
    pose_error = np.degrees(np.abs(np.asarray(coeffs - target)[0, 224:227]))
    assert np.all(pose_error < 1.0), pose_error
    start_error = np.degrees(np.abs(target[0, 224:227]))
    assert np.max(start_error) > 5.0  # the start really is off
    fitted = render.render(model, coeffs, size)
    face = np.asarray(goal["mask"]) > 0.5
    photometric = np.abs(np.asarray(fitted["image"] - goal["image"]))[face].mean()
    assert photometric < 0.01, photometric
    assert history[-1, 0] < 0.2 * history[0, 0]
