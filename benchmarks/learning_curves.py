"""FOMM trained by us and by PyTorch from the same start: the same learning curve?

python -m benchmarks.learning_curves [--steps 200] [--batch 2] [--write]

FOMM at the tiny size (configs/tiny.py:fomm) trained twice from one initialisation: by our
compiled step (maskrenderer_jax.train.step, converted to torch for the other run) and by FOMM's
torch step (tests/fomm_torch_train.py on the tests' mirror networks), both in float32 on this
CPU. Both read the same batches from our pipeline (synthetic_heads, the same augmentation) and
the same equivariance warps (FOMM's Transform, drawn once per step with numpy and given to
both), with the same random frozen VGG19. Writes every loss term of both runs per step
(benchmarks/learning_curves.json), a plot (docs/learning_curves.png) and, with --write, a
table of their relative differences into BENCHMARKS.md.
"""

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import jax
import numpy as np
import torch

from benchmarks import plots, report
from configs import common
from converters import fomm, maskrenderer_torch
from converters import vgg19 as vgg19_converter
from data_pipeline import make_train_iter
from maskrenderer_jax.train import run_plan
from maskrenderer_jax.train import step as train_step
from maskrenderer_jax.train.frozen import load_frozen
from maskrenderer_jax.train.state import init_state
from tests import fomm_torch_train, losses_torch, torch_utils, vgg_torch

SECTION = "## Learning curves: JAX vs PyTorch FOMM"
ROOT = Path(__file__).resolve().parents[1]
PNG = ROOT / "docs" / "learning_curves.png"
JSON = ROOT / "benchmarks" / "learning_curves.json"
TERMS = ("perceptual", "equivariance_value", "equivariance_jacobian")
WINDOWS = ((1, 1), (2, 10), (11, 50), (51, 100), (101, 200), (201, 300), (301, 10**9))


def torch_nets(config, state, frozen):
    """Our initial state, exported through converters/fomm.py into the torch mirrors."""
    variables = {"params": state.generator, "batch_stats": state.generator_stats}
    disc = {"params": state.discriminator, "batch_stats": state.discriminator_stats}
    exported = fomm.export_checkpoint({"model": variables, "discriminator": disc}, config.model)
    maskrenderer, discriminator = maskrenderer_torch.build(config.model.to_dict())
    nets = (maskrenderer.kp_detector, maskrenderer.generator, discriminator)
    for net, name in zip(nets, ("kp_detector", "generator", "discriminator"), strict=True):
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported[name].items()})
    vgg = vgg_torch.VGG19()
    state_dict = vgg19_converter.export_state_dict(
        jax.device_get({"params": frozen["vgg19"]["params"]})
    )
    vgg.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=False
    )  # fmt: skip  (the classifier is not used)
    return nets, vgg


def train_both(config, steps: int, seed: int) -> dict[str, dict[str, list[float]]]:
    # A constant learning rate: the torch mirror has no scheduler.
    plan = run_plan.resolve(config, run_plan.steps_per_epoch(config))
    plan = dataclasses.replace(plan, milestones=())
    frozen = load_frozen(config, plan, seed)
    state = init_state(config, seed)
    nets, vgg = torch_nets(config, state, frozen)
    trainer = fomm_torch_train.FommTrainStep(nets, config.loss, config.optim, vgg=vgg)
    step_fn = jax.jit(train_step.make_step_fn(config, plan, triplet=False), donate_argnums=0)
    batches = make_train_iter(config)
    draws = np.random.default_rng(seed)
    t = config.loss.transform
    curves = {impl: {k: [] for k in TERMS} for impl in ("jax", "torch")}
    start = time.perf_counter()
    for i in range(steps):
        batch = next(batches)
        size = batch["source"].shape[0]
        theta = (np.eye(2, 3) + draws.normal(0, t.sigma_affine, (size, 2, 3))).astype(np.float32)
        control = draws.normal(0, t.sigma_tps, (size, 1, t.points_tps**2)).astype(np.float32)
        inputs = {**train_step.step_inputs(batch, config), "theta": theta,
                  "control_params": control}  # fmt: skip
        state, metrics = step_fn(state, inputs, frozen)
        transform = losses_torch.Transform(
            torch.from_numpy(theta), torch.from_numpy(control), t.points_tps
        )
        values = trainer.step(
            torch_utils.nchw(batch["source"]), torch_utils.nchw(batch["driving"]), transform
        )
        metrics = jax.device_get(metrics)
        for k in TERMS:
            curves["jax"][k].append(float(metrics[k]))
            curves["torch"][k].append(float(values[k]))
        if i % 25 == 0 or i == steps - 1:
            eta = (time.perf_counter() - start) / (i + 1) * (steps - i - 1)
            shown = " ".join(f"{k} {curves['jax'][k][-1]:.4f}/{curves['torch'][k][-1]:.4f}"
                             for k in TERMS)  # fmt: skip
            print(f"step {i + 1}/{steps} (jax/torch) {shown}  ETA {eta:.0f} s", flush=True)
    return curves


def welch_t(a: list[float], b: list[float]) -> float:
    """Welch's t statistic of the two samples' means (|t| < 2: indistinguishable at ~5%)."""
    va, vb = statistics.variance(a), statistics.variance(b)
    se = math.sqrt(va / len(a) + vb / len(b))
    return (statistics.mean(a) - statistics.mean(b)) / se if se else 0.0


def table(curves) -> str:
    lines = [
        "| steps | term | mean JAX | mean torch | median rel. diff per step | max rel. diff "
        "| Welch t |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    steps = len(curves["jax"][TERMS[0]])
    for lo, hi in WINDOWS:
        if lo > steps:
            break
        hi = min(hi, steps)
        for k in TERMS:
            a, b = curves["jax"][k][lo - 1 : hi], curves["torch"][k][lo - 1 : hi]
            rel = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)]
            t = f"{welch_t(a, b):+.2f}" if len(a) > 2 else "—"
            lines.append(
                f"| {lo}–{hi} | {k} | {statistics.mean(a):.5g} | {statistics.mean(b):.5g} "
                f"| {statistics.median(rel):.1e} | {max(rel):.1e} | {t} |"
            )
    return "\n".join(lines)


def plot(curves, path: Path) -> None:
    """One panel per term: both runs' losses per step."""
    steps = list(range(1, len(curves["jax"][TERMS[0]]) + 1))
    panels = [
        (f"{k}   (blue: JAX, orange: PyTorch; x: step)",
         {impl: (steps, curves[impl][k]) for impl in ("torch", "jax")})
        for k in TERMS
    ]  # fmt: skip
    plots.line_panels(panels, {"jax": plots.PALETTE[0], "torch": plots.PALETTE[1]}, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning_curves",
                                     description=__doc__)  # fmt: skip
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: the config's)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    run_facts = report.facts()
    jax.config.update("jax_default_matmul_precision", "highest")  # torch's float32
    config = common.load_config(str(ROOT / "configs" / "tiny.py") + ":fomm")
    with config.unlocked():
        config.data.batch_size = args.batch
        if args.data_dir:
            config.data.data_dir = args.data_dir
    start = time.perf_counter()
    curves = train_both(config, args.steps, args.seed)
    minutes = (time.perf_counter() - start) / 60
    JSON.write_text(json.dumps(curves))
    plot(curves, PNG)
    intro = (
        f"FOMM at the tiny size (`configs/tiny.py:fomm`, batch {args.batch}, Adam lr "
        f"{config.optim.learning_rate} constant, betas ({config.optim.b1}, {config.optim.b2})) "
        f"trained for {args.steps} steps from one initialisation by our step and by FOMM's "
        "torch step (tests/fomm_torch_train.py; ours converted to torch), on the same batches "
        "of our synthetic_heads pipeline (same augmentation) with the same equivariance warps "
        "and the same random frozen VGG19, both float32 on this CPU. Per window of steps: each "
        "run's mean loss, the median and largest relative difference of the two runs at the "
        "same step, and Welch's t of the two runs' losses over the window (|t| < 2: the means "
        f"are indistinguishable at ~5%). Curves: `{PNG.relative_to(ROOT)}`; per-step values: "
        f"`{JSON.relative_to(ROOT)}`. Both runs together took {minutes:.1f} min."
    )
    report.publish(SECTION, intro, table(curves), run_facts, args.write)


if __name__ == "__main__":
    main()
