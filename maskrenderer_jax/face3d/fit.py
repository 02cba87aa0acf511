"""Fitting 3DMM coefficients to an image by gradient descent through the renderer.

The proof that the 3D branch is differentiable end to end (rasterizer interpolation and
anti-aliased silhouettes included), and the analysis-by-synthesis fit a user runs on a face:

    python -m maskrenderer_jax.face3d.fit --steps 300 --image-size 128 --out fit.png

renders a target from random coefficients of the synthetic model, fits pose, expression and
identity from a neutral start and reports the errors.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskrenderer_jax import output_files
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import render

FITTED_GROUPS = ("id", "exp", "angle", "trans")


def group_mask(names=FITTED_GROUPS) -> jax.Array:
    """[257] float32: 1 on the coefficient groups being fitted."""
    mask = np.zeros(mm.NUM_COEFFS, np.float32)
    for name, start, stop in mm.COEFF_GROUPS:
        if name in names:
            mask[start:stop] = 1.0
    return jnp.asarray(mask)


def fit_loss(model, coeffs, target_image, target_landmarks, image_size, landmark_weight):
    """Photometric L2 over the image (silhouettes included) + landmark L2 in pixels."""
    out = render.render(model, coeffs, image_size)
    photometric = jnp.mean((out["image"] - target_image) ** 2)
    landmark = jnp.mean(jnp.sum((out["landmarks"] - target_landmarks) ** 2, -1)) / image_size
    return photometric + landmark_weight * landmark, (photometric, landmark)


def fit_coefficients(
    model: mm.MorphableModel,
    target_image: jax.Array,
    target_landmarks: jax.Array,
    init_coeffs: jax.Array,
    *,
    image_size: int,
    steps: int = 300,
    learning_rate: float = 0.02,
    landmark_weight: float = 0.01,
    groups=FITTED_GROUPS,
):
    """Adam on the chosen coefficient groups; the others stay at `init_coeffs`.

    Args:
      target_image: [B, S, S, 3] float32; target_landmarks: [B, 68, 2] continuous pixels.
      init_coeffs: [B, 257] start (and the value of the groups not fitted).
    Returns:
      (coeffs [B, 257], per-step losses [steps, 3]: total, photometric, landmark).
    """
    mask = group_mask(groups)
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(coeffs, opt_state, model):
        (loss, parts), grad = jax.value_and_grad(fit_loss, argnums=1, has_aux=True)(
            model, coeffs, target_image, target_landmarks, image_size, landmark_weight
        )
        updates, opt_state = optimizer.update(grad * mask, opt_state)
        return optax.apply_updates(coeffs, updates), opt_state, jnp.stack([loss, *parts])

    coeffs = jnp.asarray(init_coeffs, jnp.float32)
    opt_state = optimizer.init(coeffs)
    history = []
    for _ in range(steps):
        coeffs, opt_state, losses = step(coeffs, opt_state, model)
        history.append(losses)
    return coeffs, np.asarray(jnp.stack(history))


def random_target(seed: int, batch: int = 1) -> np.ndarray:
    """Plausible coefficients of the synthetic model: moderate pose, expression and identity."""
    rng = np.random.default_rng(seed)
    c = np.zeros((batch, mm.NUM_COEFFS), np.float32)
    c[:, 0:80] = rng.normal(0, 0.5, (batch, 80))
    c[:, 80:144] = rng.normal(0, 0.5, (batch, 64))
    c[:, 144:224] = rng.normal(0, 0.5, (batch, 80))
    c[:, 224:227] = rng.uniform(-0.25, 0.25, (batch, 3))
    c[:, 227:254] = rng.normal(0, 0.1, (batch, 27))
    c[:, 254:257] = rng.normal(0, 0.05, (batch, 3))
    return c


def neutral_start(target: np.ndarray) -> np.ndarray:
    """Known texture and lighting, everything fitted starts at zero."""
    start = np.array(target)
    start[:, np.asarray(group_mask()) > 0] = 0.0
    return start


def main(argv=None) -> None:
    from maskrenderer_jax.face3d.synthetic_bfm import synthetic_bfm

    parser = argparse.ArgumentParser(
        prog="python -m maskrenderer_jax.face3d.fit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", help="PNG: target | start | fitted")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    output_files.check_outputs({"--out": args.out}, [], overwrite=args.overwrite)

    model = synthetic_bfm(seed=0)
    target = random_target(args.seed)
    render_fn = jax.jit(render.render, static_argnames=("image_size", "antialias"))
    goal = render_fn(model, target, image_size=args.image_size)
    start_time = time.perf_counter()
    coeffs, history = fit_coefficients(
        model,
        goal["image"],
        goal["landmarks"],
        neutral_start(target),
        image_size=args.image_size,
        steps=args.steps,
    )
    seconds = time.perf_counter() - start_time
    fitted = render_fn(model, coeffs, image_size=args.image_size)
    pose_error = np.degrees(np.abs(np.asarray(coeffs - target)[0, 224:227]))
    face = np.asarray(goal["mask"]) > 0.5
    photometric = float(np.abs(np.asarray(fitted["image"] - goal["image"]))[face].mean())
    print(
        f"{args.steps} steps in {seconds:.1f} s; loss {history[0, 0]:.4f} -> {history[-1, 0]:.4f}"
    )
    print(f"pose error (x, y, z) degrees: {np.array2string(pose_error, precision=3)}")
    print(f"mean |fitted - target| on the face: {photometric:.4f}")
    if args.out:
        from PIL import Image

        start = render_fn(model, neutral_start(target), image_size=args.image_size)
        row = np.concatenate([goal["image"][0], start["image"][0], fitted["image"][0]], axis=1)
        with output_files.replacing(args.out) as tmp:
            Image.fromarray((np.clip(row, 0, 1) * 255).astype(np.uint8)).save(tmp)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
