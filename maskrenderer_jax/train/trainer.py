"""The compiled, sharded training step of a config on a mesh.

    plan = run_plan.resolve(config, run_plan.steps_per_epoch(config))
    trainer = Trainer(config, mesh, plan)
    state = trainer.init_state()
    report = trainer.compile(batch)            # AOT: the plan's triplet phases, timed, measured
    state, metrics = trainer.step(state, batch, step)

`batch` is this process's numpy batch from data_pipeline.make_train_iter; the state is donated
(the buffers of the input state are reused for the output).
"""

import logging
import time
from dataclasses import dataclass

import jax
import ml_collections
import numpy as np

from maskrenderer_jax.train import sharding
from maskrenderer_jax.train.frozen import load_frozen
from maskrenderer_jax.train.run_plan import RunPlan
from maskrenderer_jax.train.state import GANState, init_state
from maskrenderer_jax.train.step import make_preview_fn, make_step_fn, step_inputs

PREVIEW_ROWS = 4
# XLA:CPU's copy insertion by default orders instructions by their data dependencies only, so
# it copies a donated buffer whenever a reader of its old value is not an ancestor of the
# instruction that overwrites it: most parameters (a layer's input gradient reads its kernel;
# the kernel's update depends only on the kernel's own gradient) and every Adam first moment
# (XLA recomputes the new moment inside the parameter update too). FOMM vox-256's step: 285
# copies, 480 MiB. Its region-based live-range analysis (an XLA:CPU option, off by default)
# proves them unnecessary: 2 copies, 16 MiB. The program is otherwise the same, so are its
# results (bitwise).
# XLA:CPU's default scheduler orders the step for concurrency: it computes what depends on the
# parameters or the forward pass alone as early as it can (the kernels that every input
# gradient transposes, the padded activations of the banded kernel gradients) and keeps them
# to the backward pass, across the memory peak. Its memory-optimised scheduler (an XLA:CPU
# option) orders for the smallest peak. Temporaries, default -> memory-optimised: FOMM vox-256
# 1652 -> 1340 MiB (step RSS growth 1800 -> 1440), MaskRenderer tiny 336 -> 172, FOMM tiny
# 107 -> 99. It leaves the two cores less to run at once: the step takes 1-6% more wall time
# (side by side, 2026-12-02: vox-256 4.22 -> 4.29 s; MaskRenderer tiny 0.69 -> 0.70 and
# 0.75 -> 0.79 s in two pairs) and 0-6% less CPU time. The results are the same (bitwise).
CPU_COMPILER_OPTIONS = {
    "xla_cpu_copy_insertion_use_region_analysis": True,
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
}


@dataclass
class CompileReport:
    """What compiling one step variant cost and what it will use."""

    variant: str
    seconds: float
    flops: float  # per step and device, XLA's cost analysis of the partitioned program
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, less the donated buffers reused as outputs."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def describe(self) -> str:
        return (
            f"step[{self.variant}] compiled in {self.seconds:.1f} s; per device: "
            f"{self.flops / 1e9:.1f} GFLOP/step, arguments "
            f"{self.argument_bytes / 2**20:.0f} MiB, outputs {self.output_bytes / 2**20:.0f} MiB, "
            f"temporaries {self.temp_bytes / 2**20:.0f} MiB, donated {self.alias_bytes / 2**20:.0f}"
            f" MiB, peak ~{self.peak_bytes / 2**20:.0f} MiB"
        )

    @classmethod
    def measure(cls, variant: str, seconds: float, compiled: jax.stages.Compiled):
        """XLA's cost and memory analyses of `compiled` (NaN / 0 where a backend has none)."""
        memory = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return cls(
            variant=variant,
            seconds=seconds,
            flops=float((cost or {}).get("flops", float("nan"))),
            argument_bytes=getattr(memory, "argument_size_in_bytes", 0),
            output_bytes=getattr(memory, "output_size_in_bytes", 0),
            temp_bytes=getattr(memory, "temp_size_in_bytes", 0),
            alias_bytes=getattr(memory, "alias_size_in_bytes", 0),
        )


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def jit_step(
    config: ml_collections.ConfigDict, plan: RunPlan, mesh, state_shardings, *, triplet: bool
):
    """The jitted step of one triplet phase: the state in `state_shardings` (donated), the
    batch over the batch axes, the frozen networks and the metrics replicated."""
    return jax.jit(
        make_step_fn(config, plan, triplet=triplet),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def variant_name(triplet: bool) -> str:
    return "with triplet" if triplet else "without triplet"


class Trainer:
    """Builds the state, the shardings and the compiled step variants of a config and its run
    plan (one per triplet phase the plan goes through)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        mesh: jax.sharding.Mesh,
        plan: RunPlan,
        frozen: dict | None = None,
    ):
        self.config = config
        self.mesh = mesh
        self.plan = plan
        self._init = lambda: init_state(config, config.train.seed)
        self.state_shapes = jax.eval_shape(self._init)
        self.state_shardings = sharding.tree_shardings(self.state_shapes, mesh, config.mesh)
        frozen = load_frozen(config, plan, config.train.seed) if frozen is None else frozen
        self.frozen = jax.device_put(frozen, sharding.replicated(mesh))
        self._variants = {}
        self._preview = None

    @property
    def abstract_state(self) -> GANState:
        """ShapeDtypeStructs with the state's shardings (a restore target)."""
        return _abstract(self.state_shapes, self.state_shardings)

    def init_state(self) -> GANState:
        """A fresh state, created directly in its shardings."""
        return jax.jit(self._init, out_shardings=self.state_shardings)()

    def device_batch(self, batch: dict) -> dict:
        """This process's numpy batch -> the step's global, batch-sharded inputs."""
        return sharding.global_batch(step_inputs(batch, self.config), self.mesh)

    def compile(self, batch: dict) -> list[CompileReport]:
        """AOT-compiles every variant this run will use, for `batch`'s shapes; logs each."""
        inputs = step_inputs(batch, self.config)
        global_shapes = {
            k: jax.ShapeDtypeStruct(
                (v.shape[0] * jax.process_count(), *v.shape[1:]),
                v.dtype,
                sharding=sharding.batch_sharding(self.mesh),
            )
            for k, v in inputs.items()
        }
        reports = []
        for triplet in self.plan.triplet_phases():
            start = time.perf_counter()
            jitted = jit_step(
                self.config, self.plan, self.mesh, self.state_shardings, triplet=triplet
            )
            lowered = jitted.lower(self.abstract_state, global_shapes, self.frozen)
            on_cpu = self.mesh.devices.flat[0].platform == "cpu"
            compiled = lowered.compile(CPU_COMPILER_OPTIONS if on_cpu else None)
            self._variants[triplet] = compiled
            report = CompileReport.measure(
                variant_name(triplet), time.perf_counter() - start, compiled
            )
            logging.info(report.describe())
            reports.append(report)
        return reports

    def compiled(self, step: int) -> jax.stages.Compiled:
        """The compiled variant that runs step `step` (after `compile`)."""
        triplet = self.plan.triplet_phase(step)
        if triplet not in self._variants:
            raise RuntimeError(f"call compile() first (variant triplet={triplet} is missing)")
        return self._variants[triplet]

    def step(self, state: GANState, batch: dict, step: int) -> tuple[GANState, dict]:
        """One step from the host-side step number `step` (== state.step; kept on the host so
        choosing the variant never waits for the device). `batch`: this process's numpy
        batch, or the output of `device_batch`."""
        compiled = self.compiled(step)
        if batch and isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.device_batch(batch)
        return compiled(state, batch, self.frozen)

    def preview(self, state: GANState, batch: dict) -> list[np.ndarray]:
        """The log grid's rows for the first examples of `batch` (see step.make_preview_fn),
        on the host."""
        if self._preview is None:
            preview = make_preview_fn(self.config)
            self._preview = jax.jit(
                lambda s, b, f: jax.tree.map(lambda x: x[:PREVIEW_ROWS], preview(s, b, f)),
                out_shardings=sharding.replicated(self.mesh),
            )
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.device_batch(batch)
        return jax.device_get(self._preview(state, batch, self.frozen))
