"""Where a FOMM training step spends its time: per-op breakdown of our JAX step and FOMM's torch
step, grouped by the same op kinds.

python -m benchmarks.profile_step [--only NAME]... [--steps N] [--top N] [--thunks N] [--write]

JAX: `jax.profiler` traces N steps of the compiled Trainer.step; every XLA:CPU thunk event is
matched to its HLO instruction in the compiled module (`Compiled.as_text()`) and classified by
the operations inside it (a fusion by its fused computation: a convolution, a dot, a gather, a
scatter, a reduce window...) and by its JAX op_name (`transpose(` marks the backward pass, a
`norm` module a BatchNorm). Torch: `torch.profiler` over N steps of tests/fomm_torch_train.py,
each aten op's self CPU time classified by its name. Both are summed per kind; thunks may run
concurrently on XLA's threads and torch's ops run intra-op parallel, so a kind's share of its
framework's total is the comparable figure, and a column's sum need not be the wall time. The
same configs, batch and synthetic batches as `benchmarks.train_step`.
"""

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import jax
import torch

from benchmarks import report, train_step
from configs import common

SECTION = "## Training step profile"
# name: (config, batch, has a torch reference)
CASES = {
    "FOMM tiny": ("configs/tiny.py:fomm", 8, True),
    "FOMM vox-256": ("configs/fomm_vox256.py", 2, True),
    "MaskRenderer tiny": ("configs/tiny.py", 8, False),
}
KINDS = (
    "convolution forward",
    "convolution backward",
    "matmul (dot)",
    "gather (warp forward)",
    "scatter (warp backward)",
    "batch norm",
    "pooling (max/avg window, fwd + bwd)",
    "other reductions",
    "elementwise",
    "copies, transposes, concat, pad",
    "other",
)
HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = .*?\s([a-z][a-z0-9-]*)\(")
HLO_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
HLO_CALLS = re.compile(r"calls=%([^\s,}]+)")
HLO_OP_NAME = re.compile(r'op_name="([^"]*)"')
MOVEMENT = {
    "copy", "transpose", "concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
    "reverse", "broadcast", "bitcast", "reshape", "iota",
}  # fmt: skip


PLUMBING = {"parameter", "constant", "tuple", "get-tuple-element"}  # no work of their own


def parse_hlo(text: str) -> tuple[dict, dict]:
    """({instruction: (opcode, called computation or None, op_name)},
    {computation: the opcodes that do work in it})."""
    instructions, computations, current = {}, collections.defaultdict(set), None
    for line in text.splitlines():
        if not line.startswith(" "):
            header = HLO_COMPUTATION.match(line)
            current = header.group(1) if header else None
            continue
        match = HLO_INSTRUCTION.match(line)
        if not match or current is None:
            continue
        name, opcode = match.groups()
        calls, op_name = HLO_CALLS.search(line), HLO_OP_NAME.search(line)
        instructions[name] = (opcode, calls and calls.group(1), op_name and op_name.group(1))
        if opcode not in PLUMBING:
            computations[current].add(opcode)
    return instructions, computations


def jax_kind(opcode: str, ops: set, op_name: str) -> str:
    """The kind of one XLA thunk: its opcode, the opcodes it fuses, its JAX op_name."""
    backward = "transpose(" in op_name
    if "convolution" in ops:
        return "convolution backward" if backward else "convolution forward"
    if "dot" in ops:
        return "matmul (dot)"
    if "scatter" in ops:
        return "scatter (warp backward)"
    if "gather" in ops:
        return "gather (warp forward)"
    if re.search(r"/norm\d*/", op_name):
        return "batch norm"
    if ops & {"reduce-window", "select-and-scatter"}:
        return "pooling (max/avg window, fwd + bwd)"
    if "reduce" in ops:
        return "other reductions"
    if ops <= MOVEMENT:
        return "copies, transposes, concat, pad"
    if opcode in {"fusion", "add", "multiply", "subtract", "divide", "maximum", "select",
                  "exponential", "compare", "convert", "negate", "rsqrt", "sqrt"}:  # fmt: skip
        return "elementwise"
    return "other"


def torch_kind(op: str) -> str:
    """The kind of one torch op, by its name (self time only: no op is counted twice)."""
    name = op.removeprefix("aten::")
    if "conv" in name:
        return "convolution backward" if "backward" in name else "convolution forward"
    if "grid_sampler" in name:
        return "scatter (warp backward)" if "backward" in name else "gather (warp forward)"
    if "batch_norm" in name:
        return "batch norm"
    if "pool" in name:
        return "pooling (max/avg window, fwd + bwd)"
    if name in {"mm", "addmm", "bmm", "matmul", "linear", "dot", "baddbmm"}:
        return "matmul (dot)"
    if name in {"sum", "mean", "amax", "max", "min", "norm", "linalg_vector_norm", "softmax",
                "_softmax", "_softmax_backward_data", "abs_max"}:  # fmt: skip
        return "other reductions"
    if name in {"copy_", "cat", "clone", "contiguous", "permute", "transpose", "pad",
                "constant_pad_nd", "index", "repeat", "stack", "upsample_nearest2d",
                "upsample_nearest2d_backward", "upsample_bilinear2d", "flip", "fill_", "zero_",
                "zeros", "zeros_like", "empty", "empty_like", "narrow", "slice_backward",
                "index_put_", "expand", "roll"}:  # fmt: skip
        return "copies, transposes, concat, pad"
    if op.startswith("aten::"):
        return "elementwise"
    return "other"


def profile_jax(config, batch: dict, steps: int) -> tuple[dict, dict, dict, float]:
    """({kind: seconds}, {(component, kind): seconds}, {(thunk, kind, op_name): seconds},
    median wall s/step), seconds per step, over `steps`."""
    trainer = train_step.steady_state_trainer(config)
    state = trainer.init_state()
    trainer.compile(batch)
    compiled = trainer.compiled(step=0)
    instructions, computations = parse_hlo(compiled.as_text())
    device_batch = trainer.device_batch(batch)
    walls, events = [], []
    for step in range(steps + 1):  # warm-up, then the traced steps
        with tempfile.TemporaryDirectory() as logdir:
            if step:
                jax.profiler.start_trace(logdir, create_perfetto_trace=True)
            start = time.perf_counter()
            state, metrics = trainer.step(state, device_batch, step)
            jax.block_until_ready(metrics)
            if not step:
                continue
            walls.append(time.perf_counter() - start)
            jax.profiler.stop_trace()
            (trace,) = Path(logdir).rglob("*.trace.json.gz")
            events += json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    by_kind, by_component, by_thunk = (collections.Counter() for _ in range(3))
    for event in events:
        if event.get("ph") != "X" or event.get("name") not in instructions:
            continue
        opcode, calls, op_name = instructions[event["name"]]
        ops = computations.get(calls, set()) if calls else {opcode}
        kind = jax_kind(opcode, ops, op_name or "")
        seconds = event["dur"] * 1e-6 / steps
        by_kind[kind] += seconds
        by_component[(component(op_name or ""), kind)] += seconds
        by_thunk[(event["name"], kind, op_name)] += seconds
    return by_kind, by_component, by_thunk, sorted(walls)[len(walls) // 2]


def component(op_name: str) -> str:
    """The network an op belongs to, from its op_name's module path."""
    for net in ("Vgg19", "kp_detector", "dense_motion_network", "discriminator", "generator"):
        if re.search(rf"(^|/|\(){net}[/)]", op_name):
            return net
    if "MaskRenderer.detect" in op_name:
        return "kp_detector"
    return "losses, optimiser, other"


def profile_torch(config, batch: dict, steps: int) -> tuple[dict, float]:
    run = train_step.torch_step(config, batch)
    run()  # warm-up: Adam's moments appear
    walls = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            run()
            walls.append(time.perf_counter() - start)
    by_kind = collections.Counter()
    for event in prof.key_averages():
        by_kind[torch_kind(event.key)] += event.self_cpu_time_total * 1e-6 / steps
    return by_kind, sorted(walls)[len(walls) // 2]


def kind_table(name: str, jax_kinds: dict, torch_kinds: dict, walls: dict) -> str:
    """Per kind: ms/step and share of each framework's total ("—" for torch without one)."""

    def cells(kinds: dict, kind: str | None) -> str:
        if not kinds:
            return "— | —"
        total = sum(kinds.values())
        seconds = total if kind is None else kinds.get(kind, 0.0)
        return f"{seconds * 1e3:.0f} | {seconds / total:.0%}"

    torch_wall = f"{walls['torch']:.2f}" if torch_kinds else "—"
    lines = [
        f"**{name}** (wall s/step while profiled: JAX {walls['jax']:.2f}, torch {torch_wall})",
        "",
        "| op kind | JAX ms/step | JAX share | torch ms/step | torch share |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in (*KINDS, None):
        row = (kind or "total", cells(jax_kinds, kind), cells(torch_kinds, kind))
        lines.append(f"| {' | '.join(row)} |")
    return "\n".join(lines)


def component_table(name: str, by_component: dict, top: int) -> str:
    total = sum(by_component.values())
    lines = [
        f"JAX, {name}: the {top} largest (network, op kind) groups",
        "",
        "| network | op kind | ms/step | share |",
        "|---|---|---:|---:|",
    ]
    for (net, kind), seconds in sorted(by_component.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {net} | {kind} | {seconds * 1e3:.0f} | {seconds / total:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__)
    parser.add_argument("--only", action="append", choices=list(CASES),
                        help="profile only this config (repeatable); default: all")  # fmt: skip
    parser.add_argument("--no-torch", action="store_true", help="profile only the JAX step")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps per framework")
    parser.add_argument("--top", type=int, default=12, help="rows of the per-network table")
    parser.add_argument("--thunks", type=int, default=0, help="print the N slowest JAX thunks")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)

    start_facts = report.facts()
    tables = []
    for name in args.only or CASES:
        spec, batch_size, with_torch = CASES[name]
        config = common.load_config(spec)
        config.data.batch_size = batch_size
        config.pretrained.perceptual = "vgg19"
        if config.loss.alpha:  # as benchmarks.train_step: the steady state, triplet from step 0
            config.loss.triplet_start_step = 0
        batch = train_step.synthetic_batch(config, batch_size)
        jax_kinds, jax_components, thunks, jax_wall = profile_jax(config, batch, args.steps)
        for (thunk, kind, op_name), seconds in thunks.most_common(args.thunks):
            print(f"{seconds * 1e3:8.1f} ms  {thunk}  [{kind}]  {op_name}")
        torch_kinds, torch_wall = {}, float("nan")
        if with_torch and not args.no_torch:
            torch_kinds, torch_wall = profile_torch(config, batch, args.steps)
        walls = {"jax": jax_wall, "torch": torch_wall}
        tables += [kind_table(f"{name}, batch {batch_size}", jax_kinds, torch_kinds, walls),
                   component_table(name, jax_components, args.top)]  # fmt: skip
    intro = (
        "Per-op-kind time of one training step (`python -m benchmarks.profile_step`): "
        "`jax.profiler` thunk events of the compiled JAX step, classified by the HLO they run, "
        "beside `torch.profiler`'s self CPU time per aten op of FOMM's torch step; mean over "
        f"{args.steps} profiled steps after a warm-up. Compare shares: XLA runs independent "
        "thunks concurrently and both use intra-op threads, so sums are not wall times. "
        "docs/DESIGN_NOTES.md says what was changed after reading these."
    )
    run_facts = start_facts + [f"torch threads: {torch.get_num_threads()}"]
    report.publish(SECTION, intro, "\n\n".join(tables), run_facts, args.write)


if __name__ == "__main__":
    main()
