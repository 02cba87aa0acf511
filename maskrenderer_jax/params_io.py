"""The project's on-disk format for network variables: an orbax checkpoint of a pytree of
{'params', 'batch_stats'} dicts, e.g. {'model': ..., 'discriminator': ...}."""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_variables(directory: str | Path, tree: dict) -> Path:
    """Writes `tree` (arrays) to `directory` (created; an existing one is an error)."""
    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, jax.tree.map(np.asarray, tree))
    return directory


def load_variables(directory: str | Path) -> dict:
    """Reads a tree written by `save_variables` (numpy arrays, float32 as saved)."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no variables checkpoint there")
    with ocp.StandardCheckpointer() as checkpointer:
        return jax.tree.map(np.asarray, checkpointer.restore(directory))
