"""Training-step speed: our compiled JAX step (maskrenderer_jax.train) vs FOMM's torch step.

python -m benchmarks.train_step [--batch-64 8] [--batch-256 2] [--iters N] [--only NAME]...
    [--write]

One step is what train.py repeats: generator forward, the generator losses (VGG19 perceptual
pyramid, TPS equivariance with a keypoint pass on the transformed driving frame; with
generator_gan != 0 also LSGAN and feature matching), backward, Adam for the generator (with the
keypoint detector), then, with generator_gan != 0, the discriminator's LSGAN loss, backward and
Adam. FOMM's vox-256 (generator_gan 0) trains without a discriminator, and so do both sides.
JAX runs Trainer.step (compiled ahead of time, compile time reported apart); torch runs
tests/fomm_torch_train.py (FOMM's GeneratorFullModel / DiscriminatorFullModel and train.py, on
the tests' mirror modules) in train mode. Same configs, batch and image size, float32,
synthetic batches (the data set is not read). After a warm-up step each, timed steps alternate
between the two (order swapped every round) so machine noise hits both alike; each reports its
median. The MaskRenderer config (3D branch, warping and triplet losses) has no torch
counterpart. On a GPU backend the full MaskRenderer vox-256 config also runs in bfloat16, with
its model-FLOP utilisation.
"""

import argparse
import ctypes
import dataclasses
import os
import resource
import statistics
import time
from pathlib import Path

import jax
import numpy as np
import torch

from benchmarks import report
from benchmarks.inference import smooth_images
from configs import common
from maskrenderer_jax.train import run_plan, sharding
from maskrenderer_jax.train.trainer import Trainer

# The torch FOMM mirror lives with the tests, not in the package: import it from tests/.
from tests import fomm_torch_train, torch_utils

SECTION = "## Training step"
# (name, config, has a torch reference); the batch size follows the image size.
CASES = (
    ("MaskRenderer tiny", "configs/tiny.py", False),
    ("FOMM tiny", "configs/tiny.py:fomm", True),
    ("FOMM vox-256", "configs/fomm_vox256.py", True),
)
GPU_CASE = ("MaskRenderer vox-256, bf16", "configs/maskrenderer_vox256.py", False)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s, by device_kind substring
MIB = 2**20
LIBC = ctypes.CDLL("libc.so.6")


def _proc_status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    line = next(
        x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field)
    )
    return int(line.split()[1]) * 1024


def timed(run, memory: bool) -> tuple[float, float, float, int]:
    """(wall seconds of run(), its process CPU seconds (all threads), the part of those spent
    in the kernel (system time: page faults of freshly mapped memory, mostly), and if `memory`
    the process's peak RSS during it minus its RSS before it, in bytes, else 0). For the memory,
    freed heap memory is first handed back to the OS (malloc_trim), so that reusing it shows,
    and Linux's peak RSS (VmHWM) is reset."""
    if memory:
        LIBC.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_status("VmRSS")
    start, cpu_start, system_start = time.perf_counter(), time.process_time(), os.times().system
    run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    system = os.times().system - system_start
    return seconds, cpu, system, _proc_status("VmHWM") - before if memory else 0


def synthetic_batch(config, batch: int) -> dict:
    """A make_train_iter-like batch: smooth random images, no flips, zero 3DMM coefficients."""
    size = config.model.image_size
    images = {
        k: smooth_images(batch, size, seed)
        for seed, k in enumerate(("source", "driving", "cross_driving"))
    }
    flags = {k: np.zeros(batch, bool) for k in ("flipped", "cross_flipped")}
    coeffs = {k: np.zeros((batch, 257), np.float32)
              for k in ("source_coeffs", "driving_coeffs", "cross_coeffs")}  # fmt: skip
    return {**images, **flags, **coeffs}


def steady_state_trainer(config) -> Trainer:
    """A Trainer of `config` in its steady state: the triplet phase (when the config has one)
    from step 0, so one step variant. The data set is not read: one epoch = one step."""
    plan = run_plan.resolve(config, steps_per_epoch=1)
    if plan.uses_triplet:
        plan = dataclasses.replace(plan, triplet_start_step=0)
    return Trainer(config, sharding.make_mesh(config.mesh), plan)


def jax_step(config, batch: dict):
    """(run one step, CompileReport of the variant run)."""
    trainer = steady_state_trainer(config)
    state = trainer.init_state()
    (compiled,) = trainer.compile(batch)
    device_batch = trainer.device_batch(batch)
    step = 0

    def run():
        nonlocal state, step
        state, metrics = trainer.step(state, device_batch, step)
        step += 1
        return jax.block_until_ready(metrics)

    return run, compiled


def torch_step(config, batch: dict):
    trainer = fomm_torch_train.FommTrainStep(
        torch_utils.random_fomm(config.model, seed=0), config.loss, config.optim
    )
    source, driving = torch_utils.nchw(batch["source"]), torch_utils.nchw(batch["driving"])
    return lambda: trainer.step(source, driving)


def bench(name: str, spec: str, with_torch: bool, batch_size: int, iters: int, bf16=False):
    config = common.load_config(spec)
    config.data.batch_size = batch_size
    config.pretrained.perceptual = "vgg19"  # FOMM's network, as the torch step runs it
    if bf16:
        config.model.dtype = "bfloat16"
    batch = synthetic_batch(config, batch_size)
    runs = {}
    runs["jax"], compiled = jax_step(config, batch)
    if with_torch:
        runs["torch"] = torch_step(config, batch)
    for impl, run in runs.items():  # warm-up (torch: Adam's moments appear), finiteness check
        losses = run()
        if not all(np.isfinite(float(v)) for v in losses.values()):
            raise RuntimeError(f"{name} {impl}: non-finite losses {losses}")
    times, cpu_times, system_times = ({impl: [] for impl in runs} for _ in range(3))
    memory = {}
    for i in range(iters):  # the first round also measures each one's memory
        for impl in sorted(runs, reverse=bool(i % 2)):
            seconds, cpu, system, growth = timed(runs[impl], memory=i == 0)
            times[impl].append(seconds)
            cpu_times[impl].append(cpu)
            system_times[impl].append(system)
            memory.setdefault(impl, growth)
    median = {impl: statistics.median(t) for impl, t in times.items()}
    cpu = {impl: statistics.median(t) for impl, t in cpu_times.items()}
    system = {impl: statistics.median(t) for impl, t in system_times.items()}
    for impl in runs:
        wall, cpu_s = (" ".join(f"{t:.2f}" for t in x[impl]) for x in (times, cpu_times))
        print(f"{name}, batch {batch_size}, {impl}: wall {wall} s, CPU {cpu_s} s per step")
    return {"name": f"{name}, {config.model.image_size}²", "batch": batch_size, "median": median,
            "cpu": cpu, "system": system, "memory": memory, "compile": compiled}  # fmt: skip


def mfu(result) -> str:
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_FLOPS.items() if k in kind), None)
    if peak is None:
        return f"unknown ({kind})"
    steps_per_s = 1 / result["median"]["jax"]
    # XLA's FLOPs are per device (of the partitioned program), so is the peak.
    return f"{result['compile'].flops * steps_per_s / peak:.1%}"


def table(results: list[dict], on_gpu: bool) -> str:
    lines = [
        "| config | implementation | batch | samples/s | s/step (median) "
        "| CPU s/step (of it system) "
        "| JAX/torch speed "
        "| JAX compile s | XLA peak MiB | step RSS growth MiB | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m, b = r["median"], r["batch"]
        for impl in m:
            is_jax = impl == "jax"
            ratio = "—"
            if "torch" in m and not on_gpu:
                ratio = f"{m['torch'] / m['jax']:.2f}" if is_jax else "1.00"
            c = r["compile"]
            compile_s, peak = (
                (f"{c.seconds:.1f}", f"{c.peak_bytes / MIB:.0f}") if is_jax else ("—",) * 2
            )
            lines.append(
                f"| {r['name']} | {impl} | {b} | {b / m[impl]:.2f} | {m[impl]:.2f} "
                f"| {r['cpu'][impl]:.2f} ({r['system'][impl]:.2f}) | {ratio} "
                f"| {compile_s} | {peak} | {r['memory'][impl] / MIB:.0f} "
                f"| {r.get('mfu', '—') if is_jax else '—'} |"
            )
    if not on_gpu:
        lines.append(f"| {GPU_CASE[0]}, 256² | jax | — | GPU rows appear only when run on a GPU "
                     "| — | — | — | — | — | — | — |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__)
    parser.add_argument("--batch-64", type=int, default=8, help="batch of the 64² configs")
    parser.add_argument("--batch-256", type=int, default=2, help="batch of the 256² configs")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per implementation")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--only", action="append", choices=[name for name, *_ in CASES],
                        help="run only this config (repeatable); not with --write")  # fmt: skip
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.only and args.write:
        parser.error("--write records the whole table: run it without --only")

    start_facts = report.facts()  # load average before we add to it
    torch.set_num_threads(args.torch_threads)
    on_gpu = jax.default_backend() == "gpu"

    def batch_of(spec):
        return args.batch_256 if common.load_config(spec).model.image_size == 256 else args.batch_64

    cases = [case for case in CASES if not args.only or case[0] in args.only]
    results = [bench(n, s, t, batch_of(s), args.iters) for n, s, t in cases]
    if on_gpu:
        name, spec, _ = GPU_CASE
        batch = common.load_config(spec).data.batch_size  # the paper's
        results.append(bench(name, spec, False, batch, args.iters, bf16=True))
        results[-1]["mfu"] = mfu(results[-1])

    intro = (
        "One training step (generator losses, backward, Adam; the discriminator's too when "
        "generator_gan != 0: MaskRenderer yes, FOMM vox-256 no, as FOMM) on synthetic batches;"
        f" {args.iters} timed steps per implementation after a warm-up, JAX and torch "
        "interleaved in one process, medians. JAX/torch speed (of samples/s) > 1 means JAX is "
        "faster. CPU s/step: the process's CPU time over the step (all threads), steadier than "
        "wall time on a loaded machine; in brackets its system (kernel) part, mostly page "
        "faults of memory mapped afresh for the step (docs/DESIGN_NOTES.md). The frozen nets "
        "(VGG19; for MaskRenderer also VGGFace2 and the 3DMM) have random weights, which does "
        "not change the speed. FOMM rows compute FOMM's step (tests/fomm_torch_train.py), as "
        "ours does. The MaskRenderer tiny row times its steady state (with the cross-identity "
        "pass and triplet loss). XLA peak: the compiled step's memory analysis (arguments + "
        "outputs + temporaries - donated), state and frozen nets included. Step RSS growth: how"
        " far the process's resident memory rose during the first timed step (Linux VmHWM, "
        "reset just before; freed heap memory handed back first with malloc_trim), i.e. the "
        "step's transient memory beyond what stays allocated between steps (parameters, "
        "optimiser state). Mind the load average below: with more runnable threads than cores, "
        "torch's OpenMP threads wait for each other at every parallel region and its step slows"
        " down up to 20x (seen on this machine; XLA's thread pool degrades gracefully)."
    )
    if on_gpu:
        intro += " JAX ran on the GPU and torch on the CPU, hence no speed ratio."
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run_facts = start_facts + [
        f"torch threads: {torch.get_num_threads()}; process peak RSS (ru_maxrss: both "
        f"frameworks, every config, compiles included): {peak_rss / MIB:.0f} MiB",
        f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    report.publish(SECTION, intro, table(results, on_gpu), run_facts, args.write)


if __name__ == "__main__":
    main()
