"""Checkpoints of a run: the GANState and the data iterator's position, with orbax.

    workdir/checkpoints/<step>/state   the GANState (sharded arrays; every process writes its
                                       shards)
    workdir/checkpoints/<step>/data    grain's iterator state, one JSON per process

A checkpoint at step t holds the state after t steps and the iterator positioned at the batch
of step t + 1, so a resumed run continues exactly as an uninterrupted one. Saving is
asynchronous (the arrays are copied off the devices, then written in the background); orbax
writes into a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoints intact and the incomplete one is ignored.
"""

import json
import logging
from pathlib import Path

import flax.serialization
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from maskrenderer_jax.train.state import GANState, init_state

CONFIG_FILE = "config.json"  # the run's resolved config, beside checkpoints/


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).expanduser().resolve() / "checkpoints"


def write_run_config(workdir: str | Path, config: ml_collections.ConfigDict) -> Path:
    path = Path(workdir) / CONFIG_FILE
    path.write_text(config.to_json_best_effort(indent=2) + "\n")
    return path


def read_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run was trained with (its config.json; JSON lists where it had tuples)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {workdir} a training run's workdir?")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a readable config ({e})") from e


def saved_steps(workdir: str | Path) -> list[int]:
    """The steps of a run's complete checkpoints, ascending (orbax renames a checkpoint's
    temporary folder to its step number when it is complete)."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


class Checkpoints:
    """An orbax CheckpointManager for (GANState, grain iterator) pairs."""

    def __init__(self, workdir: str | Path, checkpoint: ml_collections.ConfigDict):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=checkpoint.keep,
            save_interval_steps=checkpoint.every_steps,
            enable_async_checkpointing=checkpoint.asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: GANState, iterator=None, *, force: bool = False) -> bool:
        """Saves if `step` is on the interval (or `force`); returns whether it saves."""
        items = {"state": ocp.args.StandardSave(flax.serialization.to_state_dict(state))}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            logging.info("saving checkpoint at step %d", step)
        return saved

    def restore(self, abstract_state: GANState, iterator=None, step: int | None = None):
        """(state, step) of checkpoint `step` (default: the latest), the iterator (if given)
        repositioned in place; None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        target = flax.serialization.to_state_dict(abstract_state)
        items = {"state": ocp.args.StandardRestore(target)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = flax.serialization.from_state_dict(abstract_state, restored["state"])
        return state, step

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def load_generator_variables(
    workdir: str | Path, config: ml_collections.ConfigDict, step: int | None = None
) -> dict:
    """{'params', 'batch_stats'} of the generator side (FFD, dense motion, generator) from a
    run's checkpoint (default: the latest), on the default device, for inference."""
    if not checkpoint_dir(workdir).is_dir():
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        jax.eval_shape(lambda: init_state(config, 0)),
    )
    checkpoints = Checkpoints(workdir, config.checkpoint)
    restored = checkpoints.restore(abstract, step=step)
    checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    state, _ = restored
    return {"params": state.generator, "batch_stats": state.generator_stats}
