"""Trains MaskRenderer (or FOMM) from a config file; resumes from the workdir by itself.

    python train.py --config=configs/tiny.py --workdir=/tmp/tiny
    python train.py --config=configs/maskrenderer_vox256.py --workdir=runs/mr \
        --config.data.batch_size=64 --config.mesh.fsdp=4

Multi-host (one process per host; TPU pods and SLURM clusters are detected by JAX):
    python train.py --distributed --config=... --workdir=<shared path>
or explicitly, e.g. two processes on one machine:
    python train.py --coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=0 ...
"""

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() (auto)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the job")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
_DEBUG = flags.DEFINE_bool("debug", False, "show the traceback of a user error (a bad flag, a busy "
                           "or incompatible workdir) instead of one line")  # fmt: skip
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    # orbax logs every file operation through absl at INFO; keep warnings from it.
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax  # after flag parsing: XLA_FLAGS set by a caller still apply

    if _COORDINATOR.value or _DISTRIBUTED.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    from maskrenderer_jax import cli_errors
    from maskrenderer_jax.train.loop import train

    logging.info("JAX %s: process %d of %d, %d local / %d devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].device_kind)  # fmt: skip
    with cli_errors.reported(_DEBUG.value):
        train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
