"""The animate command's model work at 256x256: source set-up, per-frame latency of the stream
(batch 1) and frames/s at larger batches, for FOMM vox-256 and MaskRenderer vox-256 (JAX,
maskrenderer_jax.inference.reenact.Reenactor), beside FOMM's torch demo loop (on
converters.maskrenderer_torch: `make_animation`, one driving frame per call, and the same loop
batched).

python -m benchmarks.animate [--batch-sizes 1 4] [--frames 3] [--write]

Set-up: the per-source work (JAX: keypoints and the generator's encoder features; torch:
keypoints). Per frame: driving keypoints, relative motion, (MaskRenderer: the 3D branch's render
and M_3D from given coefficients), dense motion, decoder. The Deep3DFace regressor that the
command runs on every frame for MaskRenderer (ResNet-50 at 224) is timed on its own row.
Random weights, smooth random images; the first call of each program (compilation) is
reported apart; the others are medians of --frames repetitions.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import report
from benchmarks.inference import smooth_images
from configs import common
from converters import fomm
from data_pipeline import synthetic_heads
from maskrenderer_jax.face3d import recon_net, synthetic_bfm
from maskrenderer_jax.inference.reenact import Reenactor
from maskrenderer_jax.models import maskrenderer as mr
from tests import torch_utils

SECTION = "## Animate (vox-256, CPU)"


def timed(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(first call s, median of `repeats` calls s after `warmup` more untimed ones: torch's
    first calls at a new shape were 3x slower than later ones here)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def bench_jax(name, model_config, variables, batches, repeats, face_model=None) -> dict:
    size = model_config.image_size
    source = smooth_images(1, size, 0)[0]
    frames = smooth_images(max(batches), size, 1)
    coeffs = None
    kwargs = {}
    if face_model is not None:
        rng = np.random.default_rng(0)
        ident = synthetic_heads.identity_coefficients(rng)
        coeffs = synthetic_heads.clip_coefficients(ident, rng, max(batches))
        kwargs = {"face_model": face_model, "source_coeffs": ident}
    row = {"name": name, "per_batch": {}}
    reenactor = Reenactor(model_config, chunk_size=1)

    def setup():
        state = reenactor.start(variables, source, **kwargs)._stream
        jax.block_until_ready((state["kp_source"], state["source_features"]))

    row["setup_compile_s"], row["setup_s"] = timed(setup, repeats)
    start = time.perf_counter()  # the reference frame: compiles the per-frame program
    reenactor.step(frames[0], None if coeffs is None else coeffs[0])
    row["step_compile_s"] = time.perf_counter() - start
    _, row["step_s"] = timed(
        lambda: reenactor.step(frames[1 % len(frames)], None if coeffs is None else coeffs[1]),
        repeats,
    )
    for batch in batches:
        if batch == 1:
            row["per_batch"][1] = row["step_s"]
            continue
        chunked = Reenactor(model_config, chunk_size=batch).start(variables, source, **kwargs)
        _, seconds = timed(
            lambda chunked=chunked, batch=batch: chunked.steps(
                frames[:batch], None if coeffs is None else coeffs[:batch]
            ),
            repeats,
        )
        row["per_batch"][batch] = seconds / batch
    return row


@torch.no_grad()
def bench_torch(model_config, nets, batches, repeats) -> dict:
    kp_detector, generator, _ = nets
    size = model_config.image_size
    source = torch_utils.nchw(smooth_images(1, size, 0))
    frames = torch_utils.nchw(smooth_images(max(batches), size, 1))
    row = {"name": "FOMM vox-256, torch demo loop", "per_batch": {}}
    row["setup_compile_s"], row["setup_s"] = timed(lambda: kp_detector(source), repeats)
    kp_source = kp_detector(source)
    kp_initial = kp_detector(frames[:1])

    def animate(driving):  # FOMM demo.py make_animation's body, relative, for a batch
        kp_driving = kp_detector(driving)
        kp_norm = dict(kp_driving)
        kp_norm["value"] = kp_driving["value"] - kp_initial["value"] + kp_source["value"]
        change = torch.matmul(kp_driving["jacobian"], torch.inverse(kp_initial["jacobian"]))
        kp_norm["jacobian"] = torch.matmul(change, kp_source["jacobian"])
        n = driving.shape[0]
        expand = lambda kp: {k: v.expand(n, *v.shape[1:]) for k, v in kp.items()}
        return generator(source.expand(n, -1, -1, -1), kp_source=expand(kp_source),
                         kp_driving=kp_norm)["prediction"]  # fmt: skip

    row["step_compile_s"], row["step_s"] = timed(lambda: animate(frames[:1]), repeats)
    row["per_batch"][1] = row["step_s"]
    for batch in batches[1:]:
        _, seconds = timed(lambda batch=batch: animate(frames[:batch]), repeats)
        row["per_batch"][batch] = seconds / batch
    return row


def bench_regressor(repeats) -> float:
    net = recon_net.ReconNet()
    variables = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    image = jnp.asarray(smooth_images(1, recon_net.INPUT_SIZE, 2))
    run = jax.jit(lambda v, x: net.apply(v, x, train=False))
    return timed(lambda: run(variables, image).block_until_ready(), repeats)[1]


def table(rows, batches, regressor_s) -> str:
    head = " | ".join(f"ms/frame at batch {b}" for b in batches[1:])
    lines = [f"| model | source set-up ms | per-frame ms, stream (batch 1) | {head} "
             "| best frames/s | compile s (set-up, step) |",
             "|---|---:|---:|" + "---:|" * (len(batches) - 1) + "---:|---:|"]  # fmt: skip
    for r in rows:
        per = " | ".join(f"{1e3 * r['per_batch'][b]:.0f}" for b in batches[1:])
        best = max(batches, key=lambda b: -r["per_batch"][b])
        compile_s = (f"{r['setup_compile_s']:.1f}, {r['step_compile_s']:.1f}"
                     if "torch" not in r["name"] else "—")  # fmt: skip
        lines.append(
            f"| {r['name']} | {1e3 * r['setup_s']:.0f} | {1e3 * r['step_s']:.0f} | {per} "
            f"| {1 / r['per_batch'][best]:.2f} (batch {best}) | {compile_s} |"
        )
    lines.append(f"| Deep3DFace regressor (MaskRenderer's online 3DMM, per frame) | — "
                 f"| {1e3 * regressor_s:.0f} |" + " |" * (len(batches) - 1) + " | |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.animate", description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--frames", type=int, default=3, help="timed repetitions per row")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    start_facts = report.facts()

    fomm_config = common.load_config("configs/fomm_vox256.py").model
    nets = torch_utils.random_fomm(fomm_config, seed=0)
    fomm_variables = fomm.import_checkpoint(torch_utils.checkpoint_of(nets), fomm_config)["model"]
    mr_config = common.load_config("configs/maskrenderer_vox256.py").model
    mr_variables = jax.jit(lambda k: mr.init_variables(mr_config, k))(jax.random.key(0))
    batches = sorted(set(args.batch_sizes) | {1})
    rows = [
        bench_jax("FOMM vox-256, JAX", fomm_config, fomm_variables, batches, args.frames),
        bench_torch(fomm_config, nets, batches, args.frames),
        bench_jax(
            "MaskRenderer vox-256, JAX (3D branch, synthetic 3DMM)",
            mr_config,
            mr_variables,
            batches,
            args.frames,
            synthetic_bfm.synthetic_bfm(0),
        ),  # fmt: skip
    ]
    regressor_s = bench_regressor(args.frames)
    intro = (
        "What `python -m maskrenderer_jax.animate` spends per source and per driving frame "
        "(the model's work; decoding, face detection and encoding apart). Random weights; "
        f"medians of {args.frames} repetitions after a first (compiling) call and 2 warm-up "
        "calls; the machine "
        "is shared (see the load average), so read the figures as rough."
    )
    run_facts = start_facts + [
        f"torch threads: {torch.get_num_threads()}; load average at the end "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    ]
    report.publish(SECTION, intro, table(rows, batches, regressor_s), run_facts, args.write)


if __name__ == "__main__":
    main()
