"""One FOMM training step, probed for comparison with PyTorch (`converters.fomm --probe-step`).

    python -m converters.fomm --checkpoint vox-cpk.pth.tar --config configs/fomm_vox256.py \
        --vgg19 VGG19_VARIABLES --probe-step batch.npz --probe-out out.npz

batch.npz: `source`, `driving` [B, H, W, 3] float32 in [0, 1] (H = W = the config's image
size) and the equivariance warp FOMM's `Transform` draws: `theta` [B, 2, 3] and
`control_params` [B, 1, points_tps^2] (control points: FOMM's coordinate grid of points_tps x
points_tps). With the checkpoint's weights and train-mode BatchNorm, the step that
train/step.py runs (`generator_gradients`, then `discriminator_loss`) writes, under FOMM's
names and state-dict keys:

- `loss/<name>`: perceptual, equivariance_value, equivariance_jacobian and, when
  `loss.generator_gan` != 0, gen_gan, feature_matching, disc_gan, each weighted as FOMM's
  GeneratorFullModel / DiscriminatorFullModel weigh it;
- `grad/kp_detector/<key>`, `grad/generator/<key>`: d(sum of the generator's terms)/d(param);
- `state/kp_detector/<key>`, `state/generator/<key>`: every BatchNorm running_mean and
  running_var after the step's forward (three keypoint passes: source, driving, transformed
  driving), updated as torch updates them.
"""

import jax
import numpy as np

from converters import torch_layout, vgg19
from maskrenderer_jax import params_io
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.train import step

NETWORKS = ("kp_detector", "generator")
# Our step's term names -> FOMM's loss_values keys.
FOMM_NAMES = {"generator_gan": "gen_gan"}


def config_problems(config) -> list[str]:
    """Why `config` is not FOMM's objective (the probe covers FOMM's step only)."""
    problems = []
    if mr.build_model(config.model).uses_3d:
        problems.append("the model has MaskRenderer's 3D branch (use a FOMM config)")
    if config.loss.warping:
        problems.append(f"loss.warping is {config.loss.warping} (FOMM has no warping loss)")
    if config.loss.alpha:
        problems.append(f"loss.alpha is {config.loss.alpha} (FOMM has no triplet loss)")
    if config.loss.beta != 1:
        problems.append(f"loss.beta is {config.loss.beta} (FOMM sums its terms: 1)")
    return problems


def read_batch(path: str, config) -> dict[str, np.ndarray]:
    """The probe's batch, checked against `config`; one ValueError naming `path` and every
    missing array and wrong shape."""
    size = config.model.image_size
    points = config.loss.transform.points_tps
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    problems = [f"missing array '{k}'" for k in ("source", "driving", "theta", "control_params")
                if k not in arrays]  # fmt: skip
    batch = next((arrays[k].shape[0] for k in ("source", "driving") if k in arrays
                  and arrays[k].ndim), None)  # fmt: skip
    b = batch if batch is not None else "B"
    expected = {
        "source": (b, size, size, 3),
        "driving": (b, size, size, 3),
        "theta": (b, 2, 3),
        "control_params": (b, 1, points**2),
    }
    for name, shape in expected.items():
        if name not in arrays:
            continue
        x = arrays[name]
        if x.shape != shape:
            problems.append(f"'{name}' must be {list(shape)}; got {list(x.shape)}")
        elif not np.issubdtype(x.dtype, np.floating):
            problems.append(f"'{name}' must be float32; got {x.dtype}")
        elif not np.all(np.isfinite(x)):
            problems.append(f"'{name}' has NaN or infinite values")
        elif name in ("source", "driving") and (x.min() < 0 or x.max() > 1):
            problems.append(f"'{name}' must lie in [0, 1]; got [{x.min():.3g}, {x.max():.3g}]")
    if problems:
        found = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(arrays.items())) or "nothing"
        lines = "\n".join(f"  {p}" for p in problems)
        raise ValueError(
            f"{path}: not a training-step batch for this config (image {size}x{size}, "
            f"points_tps {points}):\n{lines}\n  found: {found}"
        )
    return {k: arrays[k].astype(np.float32) for k in expected}


def load_vgg19(directory: str) -> dict:
    """VGG19 variables written by `python -m converters.vgg19 --out`, checked leaf by leaf;
    one ConversionError naming `directory` and every missing, unexpected or misshapen leaf."""
    variables = params_io.load_variables(directory)
    expected = dict(_leaves(vgg19.abstract_variables()))
    got = dict(_leaves(variables))
    problems = [f"missing {k} {list(v.shape)}" for k, v in expected.items() if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [
        f"{k}: {list(got[k].shape)}, VGG19 needs {list(v.shape)}"
        for k, v in expected.items()
        if k in got and tuple(got[k].shape) != tuple(v.shape)
    ]
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise torch_layout.ConversionError(
            f"{directory}: not VGG19 variables (python -m converters.vgg19 --out writes "
            f"them):\n{lines}"
        )
    return variables


def _leaves(tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        yield "/".join(str(getattr(p, "key", p)) for p in path), leaf


def probe_step(config, networks: dict, vgg19_variables: dict, batch: dict) -> dict:
    """One training step's forward and generator gradient (no update), in FOMM's names.

    networks: {'model': {'params', 'batch_stats'}, 'discriminator': variables or None} as
    converters.fomm imports them; batch: `read_batch`'s arrays.
    """
    problems = config_problems(config)
    adversarial = step.adversarial(config)
    if adversarial and networks.get("discriminator") is None:
        problems.append("loss.generator_gan != 0 needs the checkpoint's discriminator")
    if problems:
        raise ValueError("--probe-step: " + "; ".join(problems))
    model, disc = networks["model"], networks.get("discriminator") or {}

    @jax.jit
    def run(model, disc, batch, frozen):
        (_, (terms, aux)), grads = step.generator_gradients(
            config,
            triplet=False,
            g_params=model["params"],
            g_stats=model["batch_stats"],
            d_params=disc.get("params"),
            d_stats=disc.get("batch_stats"),
            batch=batch,
            frozen=frozen,
            transform=step.equivariance_transform(config, batch, rng=None),
        )
        if adversarial:
            terms["disc_gan"], _ = step.discriminator_loss(
                config, disc["params"], aux["d_stats"], batch["driving"], aux["prediction"],
                aux["kp_driving"],
            )  # fmt: skip
        return terms, grads, aux["g_stats"]

    # torch computes in float32: so must every matmul and conv here, on any backend.
    with jax.default_matmul_precision("highest"):
        terms, grads, stats = jax.device_get(run(model, disc, batch, {"vgg19": vgg19_variables}))
    out = {f"loss/{FOMM_NAMES.get(k, k)}": np.float32(v) for k, v in terms.items()}
    for name in NETWORKS:
        for key, value in torch_layout.to_torch({"params": grads[name]}).items():
            out[f"grad/{name}/{key}"] = value
        for key, value in torch_layout.to_torch({"batch_stats": stats[name]}).items():
            if key.endswith(("running_mean", "running_var")):
                out[f"state/{name}/{key}"] = value
    return out
