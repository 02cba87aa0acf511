"""The device mesh and the shardings of the state, the batch and the frozen networks.

Mesh axes ('data', 'fsdp'): the batch is split over both; a state leaf is replicated or, by
the first matching rule of `config.mesh.rules`, split along its largest dimension that the
fsdp axis divides (ZeRO-3 style: XLA gathers it for the forward and reduce-scatters its
gradient). Optimiser moments follow their parameters because the rules match on the leaf's
path, which ends in the parameter's path.
"""

import math
import re

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all, every process's).

    Devices keep jax.devices() order (process by process), so each process's devices hold a
    contiguous block of the global batch: the block its data iterator produces.
    """
    devices = list(jax.devices() if devices is None else devices)
    fsdp = mesh_config.fsdp
    data = len(devices) // fsdp if mesh_config.data == -1 else mesh_config.data
    if fsdp < 1 or data < 1 or data * fsdp != len(devices):
        raise ValueError(
            f"mesh data={mesh_config.data} x fsdp={fsdp} does not cover the "
            f"{len(devices)} devices (data=-1 takes every device fsdp leaves)"
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp), ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over ('data', 'fsdp')."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def path_string(path) -> str:
    """A tree path as 'generator/kp_detector/first/conv/kernel' (the rules' subject)."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def leaf_spec(
    path: str, shape: tuple[int, ...], mesh_config: ml_collections.ConfigDict, fsdp_size: int
) -> PartitionSpec:
    """The PartitionSpec the rules give one leaf."""
    kind = next((k for pattern, k in mesh_config.rules if re.search(pattern, path)), "replicated")
    if kind not in ("fsdp", "replicated"):
        raise ValueError(f"mesh rule kind must be 'fsdp' or 'replicated', got {kind!r}")
    if kind == "replicated" or fsdp_size == 1 or math.prod(shape) < mesh_config.fsdp_min_size:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def tree_shardings(tree, mesh: Mesh, mesh_config: ml_collections.ConfigDict):
    """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) by the rules."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(
            mesh, leaf_spec(path_string(path), tuple(leaf.shape), mesh_config, fsdp_size)
        ),
        tree,
    )


def global_batch(local: dict, mesh: Mesh) -> dict:
    """This process's numpy batch -> global jax.Arrays sharded over the batch axes (each
    process passes its own contiguous block of rows)."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in local.items()
    }
