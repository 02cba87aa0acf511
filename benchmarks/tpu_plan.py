"""Pod-run plans: the training step compiled for TPU slices on this machine, which has none.

python -m benchmarks.tpu_plan [--config C] [--topology v5e-16 v6e-8 ...] [--max-batch-search]
    [--write]

For each slice, maskrenderer_jax.train.plan compiles every step variant of the config under
the data-parallel and the FSDP mesh with libtpu's compiler and tabulates XLA's per-device
memory and FLOPs (and with --max-batch-search the largest global batch that fits), with the
compile time of each slice.
"""

import argparse
import os
import time

import jax

from benchmarks import report
from configs import common
from maskrenderer_jax.train import plan

SECTION = "## Planning a pod run"
INTRO = (
    "The training step compiled for TPU slices on a CPU-only machine "
    "(`python -m maskrenderer_jax.train.plan`, libtpu's compiler on the slice's topology, no "
    "hardware). Per device, from XLA's analyses of the compiled program: argument, output and "
    "temporary bytes; peak = arguments + outputs + temporaries - donated buffers; GFLOP per "
    "step. 'Largest global batch that fits' is XLA's verdict for the heavier (triplet) "
    "variant: the largest multiple of the device count that compiles without "
    "RESOURCE_EXHAUSTED. Compiled, not run: no step time."
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/maskrenderer_vox256.py")
    parser.add_argument("--topology", nargs="+", default=["v5e-16"], choices=plan.SLICES)
    parser.add_argument("--max-batch-search", action="store_true")
    parser.add_argument("--write", action="store_true", help="record it in BENCHMARKS.md")
    args = parser.parse_args()
    jax.config.update("jax_platforms", "cpu")
    run_facts = report.facts()
    libtpu = plan.find_libtpu()
    run_facts.append(f"libtpu {libtpu.version if libtpu else os.environ.get('TPU_LIBRARY_PATH')}")
    tables = []
    for name in args.topology:
        tpu = plan.SLICES[name]
        start = time.perf_counter()
        rows = plan.plan(
            common.load_config(args.config), tpu, plan.MESHES, None, args.max_batch_search
        )
        seconds = time.perf_counter() - start
        tables.append(
            f"`{args.config}` on {name} ({tpu.chips} chips, `{tpu.topology_name}`), "
            f"compiled in {seconds / 60:.1f} min:\n\n{plan.plan_table(rows, tpu)}"
        )
    report.publish(SECTION, INTRO, "\n\n".join(tables), run_facts, args.write)


if __name__ == "__main__":
    main()
