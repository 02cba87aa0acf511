"""The project's on-disk format for network variables: an orbax checkpoint of a pytree of
{'params', 'batch_stats'} dicts, e.g. {'model': ..., 'discriminator': ...}."""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from maskrenderer_jax import output_files


def save_variables(directory: str | Path, tree: dict, *, overwrite: bool = False) -> Path:
    """Writes `tree` (arrays) to `directory`: written beside it, then renamed, so a failed
    write leaves nothing half-done. An existing `directory` is an error unless `overwrite`."""
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass --overwrite to replace it")
    with output_files.replacing(directory) as tmp, ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp, jax.tree.map(np.asarray, tree))
        checkpointer.wait_until_finished()
    return directory


def load_variables(directory: str | Path) -> dict:
    """Reads a tree written by `save_variables` (numpy arrays, float32 as saved)."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no variables checkpoint there")
    with ocp.StandardCheckpointer() as checkpointer:
        return jax.tree.map(np.asarray, checkpointer.restore(directory))
