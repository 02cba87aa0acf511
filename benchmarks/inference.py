"""Per-frame reenactment speed at 256x256 (FOMM vox-256): our JAX model vs the torch reference.

python -m benchmarks.inference [--batch-sizes 1 8] [--iters N] [--config C] [--write]

The timed work per frame batch is what inference repeats for every driving frame: keypoint
detection on the driving frames, dense motion, generator; the source keypoints are computed
once beforehand. JAX runs it as one jitted function (compile time reported apart); torch runs
the PyTorch networks (converters.maskrenderer_torch) under `inference_mode` in eval mode. Both
hold the same random weights (torch -> converters.fomm) and get the same inputs, and their
outputs are compared before timing. Timing repetitions alternate between the two (order
swapped every round) so machine noise hits both alike; each reports its median.
"""

import argparse
import statistics
import time

import jax
import numpy as np
import torch

from benchmarks import report
from configs import common
from converters import fomm
from maskrenderer_jax.models import maskrenderer as mr

# The torch FOMM mirror lives with the tests, not in the package: import it from tests/.
from tests import torch_utils

SECTION = "## Inference (FOMM vox-256, 256², CPU)"
TOLERANCE = 1e-3  # max |JAX - torch| of the prediction; the parity tests hold 1e-4 at batch 1


def smooth_images(batch: int, size: int, seed: int) -> np.ndarray:
    """[batch, size, size, 3] float32 in [0, 1]: upsampled coarse noise, so that the keypoint
    softmaxes see structure rather than pixel noise."""
    coarse = np.random.default_rng(seed).uniform(0, 1, (batch, 8, 8, 3)).astype(np.float32)
    return np.asarray(jax.image.resize(coarse, (batch, size, size, 3), "linear")).clip(0, 1)


def jax_reenact(model):
    def reenact(variables, source, kp_source, driving):
        kp_driving = model.apply(variables, driving, train=False, method="detect")
        out = model.apply(variables, source, kp_source, kp_driving, train=False, method="animate")
        return out["prediction"]

    return jax.jit(reenact)


def torch_reenact(nets):
    kp_detector, generator, _ = nets

    def reenact(source, kp_source, driving):
        with torch.inference_mode():
            return generator(source, kp_source=kp_source, kp_driving=kp_detector(driving))[
                "prediction"
            ]

    return reenact


def bench_batch(model_config, model, variables, nets, batch: int, iters: int) -> dict:
    size = model_config.image_size
    source = np.repeat(smooth_images(1, size, seed=0), batch, axis=0)
    driving = smooth_images(batch, size, seed=1)

    # Source keypoints once, outside the timed function (each implementation its own).
    detect = jax.jit(lambda v, x: model.apply(v, x, train=False, method="detect"))
    kp_source_jax = jax.block_until_ready(detect(variables, source))
    source_t, driving_t = torch_utils.nchw(source), torch_utils.nchw(driving)
    with torch.inference_mode():
        kp_source_t = nets[0](source_t)

    args = jax.device_put((variables, source, kp_source_jax, driving))
    start = time.perf_counter()
    compiled = jax_reenact(model).lower(*args).compile()
    compile_s = time.perf_counter() - start
    torch_fn = torch_reenact(nets)
    runs = {
        "jax": lambda: compiled(*args).block_until_ready(),
        "torch": lambda: torch_fn(source_t, kp_source_t, driving_t),
    }

    # The first call of each is the correctness check (and the warm-up).
    got, expected = runs["jax"](), torch_utils.nhwc(runs["torch"]())
    max_diff = float(np.max(np.abs(np.asarray(got) - expected)))
    print(f"batch {batch}: max |prediction JAX - torch| = {max_diff:.2e}")
    if not max_diff <= TOLERANCE:
        raise RuntimeError(f"JAX and torch disagree at batch {batch}: {max_diff:.2e}")

    times = {name: [] for name in runs}
    for i in range(iters):
        for name in sorted(runs, reverse=bool(i % 2)):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"median": median, "compile_s": compile_s, "max_diff": max_diff}


def table(results: dict[int, dict]) -> str:
    lines = [
        "| implementation | batch | ms/frame (median) | frames/s | JAX/torch speed "
        "| JAX compile s | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, r in results.items():
        m = r["median"]
        for name in ("jax", "torch"):
            ratio = f"{m['torch'] / m['jax']:.2f}" if name == "jax" else "1.00"
            compile_s = f"{r['compile_s']:.1f}" if name == "jax" else "—"
            diff = f"{r['max_diff']:.1e}" if name == "jax" else "—"
            lines.append(
                f"| {name} | {batch} | {1e3 * m[name] / batch:.1f} | {batch / m[name]:.2f} "
                f"| {ratio} | {compile_s} | {diff} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=10, help="timed repetitions per side")
    parser.add_argument("--config", default="configs/fomm_vox256.py")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)

    start_facts = report.facts()  # load average before we add to it
    model_config = common.load_config(args.config).model
    nets = torch_utils.random_fomm(model_config, seed=0)
    for net in nets:
        net.eval()
    variables = fomm.import_checkpoint(torch_utils.checkpoint_of(nets), model_config)["model"]
    model = mr.build_model(model_config)
    results = {
        b: bench_batch(model_config, model, variables, nets, b, args.iters)
        for b in args.batch_sizes
    }

    intro = (
        "Per-frame reenactment (driving keypoints + dense motion + generator; source "
        f"keypoints precomputed), {args.iters} interleaved repetitions per implementation, "
        "same random weights and inputs. JAX/torch speed > 1 means JAX is faster."
    )
    report.publish(
        SECTION,
        intro,
        table(results),
        start_facts + [f"torch threads: {torch.get_num_threads()}"],
        args.write,
    )


if __name__ == "__main__":
    main()
