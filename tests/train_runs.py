"""Training runs in subprocesses for tests/test_train.py: `python tests/train_runs.py ARGS`.

    --config SPEC --workdir DIR --steps N [--kill_after K] [--set key=value ...]
        [--coordinator 127.0.0.1:PORT --num_processes P --process_id I]

--kill_after K sends SIGKILL to itself right after the checkpoint of step K is on disk (a
`kill -9` at the worst moment for a resume: mid-run, with an iterator in flight).
"""

import argparse
import ast
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def config_for(spec: str, steps: int, overrides: list[str]):
    """`spec` with train.num_steps = steps and --set overrides (Python literals)."""
    from configs import common

    config = common.load_config(spec)
    config.train.num_steps = steps
    for item in overrides:
        key, _, value = item.partition("=")
        *path, leaf = key.split(".")
        section = config
        for name in path:
            section = section[name]
        section[leaf] = ast.literal_eval(value)
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--kill_after", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--coordinator")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)

    import jax

    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    from maskrenderer_jax.train import loop

    def after_step(step, state, checkpoints):
        del state
        if step == args.kill_after:
            checkpoints.wait()
            os.kill(os.getpid(), signal.SIGKILL)

    config = config_for(args.config, args.steps, args.set)
    loop.train(config, args.workdir, after_step=after_step)


if __name__ == "__main__":
    main()
