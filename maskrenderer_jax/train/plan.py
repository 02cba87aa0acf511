"""Planning a pod run from one machine: the sharded training step compiled for a TPU slice
that is not there.

    python -m maskrenderer_jax.train.plan --config configs/maskrenderer_vox256.py \\
        --topology v5e-16 [--mesh data|fsdp|both] [--batch N] [--max-batch-search]

libtpu's compiler (requirements-tpu.txt, the version jax's `tpu` extra pins; `find_libtpu`)
builds the slice's devices from its topology name alone (jax.experimental.topologies), so the
step compiles for them on a CPU-only host exactly as `train.py` would compile it on the slice.
For each mesh it prints what XLA reports per device: argument, output, temporary and peak
bytes, and FLOPs per step; with --max-batch-search, the largest global batch whose step still
fits a chip's HBM, by XLA's own verdict (compiling a step that does not fit fails with
RESOURCE_EXHAUSTED, as it would on the slice).

Meshes: 'data' puts every chip on the data axis (the state replicated); 'fsdp' every chip on
the fsdp axis (state leaves split by `config.mesh.rules`, ZeRO-3). The batch is split over
both axes either way (train/sharding.py).
"""

import argparse
import dataclasses
import importlib.metadata
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from configs import common
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.train import run_plan, sharding
from maskrenderer_jax.train.frozen import load_frozen
from maskrenderer_jax.train.state import init_state
from maskrenderer_jax.train.step import step_inputs
from maskrenderer_jax.train.trainer import (
    CompileReport,
    jit_step,
    variant_name,
)

GIB = 2**30
MESHES = ("data", "fsdp")
# Per-device batch sizes the search tries at most (a step this large would not fit anyway).
MAX_PER_DEVICE_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class Generation:
    """A TPU generation: libtpu's name for it, its chip configuration, the HBM of one chip
    (Google Cloud's system-architecture pages), and how slice names count: v4 and v5p count
    TensorCores (two per chip, used as one 'megacore' device), v5e and v6e count chips."""

    libtpu_name: str
    chip_config: str
    hbm_gib: float
    cores_per_chip: int
    accelerator_type: str  # Cloud's accelerator-type prefix (libtpu reads TPU_ACCELERATOR_TYPE)
    chip_grids: dict  # chips -> the slice's chip grid


GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
           256: "16x16"}  # fmt: skip
GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4"}
GENERATIONS = {
    "v4": Generation("v4", "megacore", 32, 2, "v4", GRID_3D),
    "v5p": Generation("v5p", "megacore", 95, 2, "v5p", GRID_3D),
    "v5e": Generation("v5e", "default", 16, 1, "v5litepod", GRID_2D),
    "v6e": Generation("v6e", "default", 32, 1, "v6e", GRID_2D),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # 'v5e-16'
    generation: Generation
    chips: int

    @property
    def topology_name(self) -> str:
        return f"{self.generation.libtpu_name}:{self.generation.chip_grids[self.chips]}"


SLICES = {
    f"{gen_name}-{chips * gen.cores_per_chip}": Slice(
        f"{gen_name}-{chips * gen.cores_per_chip}", gen, chips
    )
    for gen_name, gen in GENERATIONS.items()
    for chips in gen.chip_grids
}


def parse_slice(name: str) -> Slice:
    if name not in SLICES:
        raise ValueError(f"unknown --topology {name!r}; accepted: {', '.join(SLICES)}")
    return SLICES[name]


def find_libtpu() -> importlib.metadata.Distribution | None:
    """libtpu's installed distribution: importable (`pip install -r requirements-tpu.txt`), or
    in the venv's `libtpu/` folder, where `make` installs it off the import path.

    Off the path, because every JAX process that does not set JAX_PLATFORMS probes an
    importable libtpu for TPUs: ~100 MB of memory and libtpu's warnings on stderr
    ("unexpected worker hostname ...") in every training, evaluation and test process of a
    machine without TPUs. The planner alone loads it, through TPU_LIBRARY_PATH.
    """
    for path in (sys.path, [str(Path(sys.prefix) / "libtpu")]):
        for dist in importlib.metadata.distributions(name="libtpu", path=path):
            return dist
    return None


def topology_devices(tpu: Slice) -> list:
    """The slice's devices, compile-only (no hardware is opened), in id order.

    libtpu is loaded once per process; ALLOW_MULTIPLE_LIBTPU_LOAD lets it load while another
    process on this machine holds it (libtpu otherwise takes /tmp/libtpu_lockfile for the
    process's lifetime), and the other variables keep it from asking a cloud metadata server
    about a TPU host this machine is not.
    """
    libtpu = find_libtpu()
    if libtpu is None and "TPU_LIBRARY_PATH" not in os.environ:
        raise SystemExit(
            "plan needs libtpu (the TPU compiler): `make .venv/.installed` puts it in "
            ".venv/libtpu, or pip install -r requirements-tpu.txt"
        )
    if libtpu is not None:
        os.environ.setdefault("TPU_LIBRARY_PATH", str(libtpu.locate_file("libtpu/libtpu.so")))
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{tpu.generation.accelerator_type}-{tpu.chips}")
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        topology_name=tpu.topology_name,
        platform="tpu",
        chip_config_name=tpu.generation.chip_config,
        chips_per_host_bounds=(2, 2, 1) if tpu.chips >= 4 else (1, 1, 1),
        num_slices=1,
    )
    return sorted(topology.devices, key=lambda d: d.id)


def mesh_config(config: ml_collections.ConfigDict, kind: str, devices: int):
    """A copy of config.mesh (its rules) with every device on the `kind` axis."""
    mesh = ml_collections.ConfigDict(config.mesh.to_dict())
    mesh.data, mesh.fsdp = (-1, 1) if kind == "data" else (1, devices)
    return mesh


def abstract_batch(config: ml_collections.ConfigDict, global_batch: int) -> dict:
    """ShapeDtypeStructs of the step's inputs from a global batch of make_train_iter's
    fields (data_pipeline/train_iter.py), narrowed to what the step reads."""
    size = config.model.image_size
    image = jax.ShapeDtypeStruct((global_batch, size, size, 3), jnp.float32)
    flag = jax.ShapeDtypeStruct((global_batch,), jnp.bool_)
    coeffs = jax.ShapeDtypeStruct((global_batch, mm.NUM_COEFFS), jnp.float32)
    fields = {
        **dict.fromkeys(("source", "driving", "cross_driving"), image),
        **dict.fromkeys(("flipped", "cross_flipped"), flag),
        **dict.fromkeys(("source_coeffs", "driving_coeffs", "cross_coeffs"), coeffs),
    }
    return step_inputs(fields, config)


class AbstractStep:
    """The training step of `config`, compiled for any mesh (of devices that need not exist)
    from abstract inputs: the state, batch and frozen networks are never built."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        # The data set need not be on this machine: the schedule's step values (from
        # steps_per_epoch) are constants of the program that change neither its memory nor
        # its FLOPs.
        self.plan = run_plan.resolve(config, steps_per_epoch=1)
        self.state = jax.eval_shape(lambda: init_state(config, config.train.seed))
        self.frozen = jax.eval_shape(lambda: load_frozen(config, self.plan, config.train.seed))

    def compile(self, mesh, global_batch: int, *, triplet: bool) -> CompileReport:
        start = time.perf_counter()
        shardings = sharding.tree_shardings(self.state, mesh, self.config.mesh)
        lowered = jit_step(self.config, self.plan, mesh, shardings, triplet=triplet).lower(
            self.state, abstract_batch(self.config, global_batch), self.frozen
        )
        return CompileReport.measure(
            variant_name(triplet), time.perf_counter() - start, lowered.compile()
        )


def out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error)


def largest_fitting(fits: Callable[[int], bool], limit: int = MAX_PER_DEVICE_BATCH) -> int:
    """The largest n in [1, limit] with fits(n), 0 when fits(1) is False; fits must be
    monotone (true up to some n, false above). Tries 1, 2, 4, ... until one does not fit, then
    bisects between the last two: about 2 log2(n) calls."""
    low, high = 0, 1
    while high <= limit and fits(high):
        low, high = high, high * 2
    if high > limit:
        raise RuntimeError(f"still fits at {low} (the search's limit): stopped")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def largest_batch(step: AbstractStep, mesh, *, triplet: bool) -> tuple[int, list]:
    """The largest global batch (a multiple of the device count) whose step fits a chip's
    HBM, 0 when one example per device does not; and the (global batch, fits) tried."""
    devices = mesh.devices.size
    tried = []

    def fits(per_device: int) -> bool:
        try:
            step.compile(mesh, per_device * devices, triplet=triplet)
            ok = True
        except jax.errors.JaxRuntimeError as error:
            if not out_of_memory(error):
                raise
            ok = False
        tried.append((per_device * devices, ok))
        return ok

    return largest_fitting(fits) * devices, tried


def default_batch(config, devices: int) -> int:
    """The config's batch size, rounded up to a multiple of the device count."""
    return math.ceil(config.data.batch_size / devices) * devices


def format_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def plan_table(rows: list[dict], tpu: Slice) -> str:
    """A Markdown table of the compiled variants (rows of `plan`)."""
    hbm = tpu.generation.hbm_gib
    lines = [
        "| mesh | global batch | step | arguments | outputs | temporaries | peak "
        f"(of {hbm:g} GiB) | GFLOP/step per device | largest global batch that fits |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        report = row["report"]
        if report is None:
            lines.append(
                f"| {row['mesh']} | {row['batch']} | {row['step']} | does not fit ({row['error']}) "
                "| | | | | |"
            )
            continue
        peak = report.peak_bytes
        lines.append(
            f"| {row['mesh']} | {row['batch']} | {report.variant} | "
            f"{format_bytes(report.argument_bytes)} | {format_bytes(report.output_bytes)} | "
            f"{format_bytes(report.temp_bytes)} | {format_bytes(peak)} ({peak / (hbm * GIB):.0%}) "
            f"| {report.flops / 1e9:.0f} | {row.get('largest', '')} |"
        )
    return "\n".join(lines)


def plan(config, tpu: Slice, meshes, batch: int | None, search: bool, log=print) -> list[dict]:
    """Compiles every step variant of `config` for each mesh kind on `tpu`; one row each."""
    devices = topology_devices(tpu)
    batch = batch or default_batch(config, len(devices))
    step = AbstractStep(config)
    rows = []
    for kind in meshes:
        mesh = sharding.make_mesh(mesh_config(config, kind, len(devices)), devices)
        for triplet in step.plan.triplet_phases():
            row = {"mesh": f"{kind} {dict(mesh.shape)}", "batch": batch}
            try:
                row["report"] = step.compile(mesh, batch, triplet=triplet)
                log(f"{kind} mesh: {row['report'].describe()}")
            except jax.errors.JaxRuntimeError as error:
                if not out_of_memory(error):
                    raise
                row.update(report=None, step=variant_name(triplet), error="RESOURCE_EXHAUSTED")
                log(f"{kind} mesh, {variant_name(triplet)}: {str(error).splitlines()[0]}")
            rows.append(row)
        if search:  # the heaviest variant (the last) bounds the batch
            largest, tried = largest_batch(step, mesh, triplet=step.plan.triplet_phases()[-1])
            rows[-1]["largest"] = largest
            log(f"{kind} mesh: batches tried (global, fits): {tried}")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m maskrenderer_jax.train.plan",
        description="Compile the sharded training step for a TPU slice without the hardware "
        "and print its per-device memory, FLOPs and the largest batch that fits.",
    )
    parser.add_argument("--config", required=True, help="a config file (path[:arg])")
    parser.add_argument("--topology", required=True, help=f"a slice: {', '.join(SLICES)}")
    parser.add_argument("--mesh", choices=(*MESHES, "both"), default="both")
    parser.add_argument(
        "--batch", type=int, help="global batch (default: the config's, rounded up to a "
        "multiple of the device count)"
    )  # fmt: skip
    parser.add_argument(
        "--max-batch-search",
        action="store_true",
        help="also find the largest global batch that fits (a compile per try)",
    )
    args = parser.parse_args(argv)
    try:
        args.slice = parse_slice(args.topology)
    except ValueError as error:
        parser.error(str(error))
    if args.batch is not None and (args.batch < 1 or args.batch % args.slice.chips):
        parser.error(
            f"--batch must be a positive multiple of {args.topology}'s {args.slice.chips} "
            f"devices, got {args.batch}"
        )
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    # The host computes nothing: shapes only (libtpu compiles for the slice whatever this is).
    jax.config.update("jax_platforms", "cpu")
    config = common.load_config(args.config)
    meshes = MESHES if args.mesh == "both" else (args.mesh,)
    rows = plan(config, args.slice, meshes, args.batch, args.max_batch_search)
    table = plan_table(rows, args.slice)
    print(f"\n{args.config} on {args.slice.name} ({args.slice.topology_name}):\n\n{table}")
    return table


if __name__ == "__main__":
    main()
