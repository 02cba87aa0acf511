"""The file format of `python -m converters.export`, read and written with numpy and
safetensors only (neither JAX nor torch): tensors `<network>.<PyTorch state-dict key>` and
string metadata `config` (the model section as JSON) and `networks`. In npz files the metadata
are 0-d string arrays `__metadata__.<key>`."""

import json
from pathlib import Path

import numpy as np

from maskrenderer_jax import output_files

NETWORKS = ("kp_detector", "generator", "discriminator")
DISCRIMINATOR = "discriminator"
FORMATS = ("safetensors", "npz")
NPZ_METADATA = "__metadata__."


def write_export(path: str | Path, tensors: dict, metadata: dict[str, str], file_format: str):
    """Writes the file atomically (an interrupted write leaves no half file)."""
    with output_files.replacing(path) as tmp:
        if file_format == "npz":
            strings = {NPZ_METADATA + k: np.str_(v) for k, v in metadata.items()}
            with open(tmp, "wb") as f:  # a file object: numpy appends no '.npz'
                np.savez(f, **tensors, **strings)
        else:
            import safetensors.numpy

            safetensors.numpy.save_file(tensors, str(tmp), metadata=metadata)


def read_export(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a .safetensors or .npz export, as numpy (bfloat16 stays)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            metadata = {k[len(NPZ_METADATA) :]: str(v) for k, v in arrays.items()
                        if k.startswith(NPZ_METADATA)}  # fmt: skip
            return {k: v for k, v in arrays.items() if not k.startswith(NPZ_METADATA)}, metadata
        from safetensors import safe_open

        with safe_open(path, "numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types; numpy ValueError/OSError
        raise ValueError(f"{path}: not a readable export ({type(e).__name__}: {e})") from e


def export_config(metadata: dict[str, str], source: str) -> dict:
    """The model config of an export's metadata ('config': JSON)."""
    try:
        return json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{source}: no model config in the metadata ('config' as JSON: {e}); not a "
            "`python -m converters.export` file?"
        ) from e
