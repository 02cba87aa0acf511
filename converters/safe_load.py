"""Readers for checkpoint files from strangers: nothing in them can run code.

PyTorch files go through `torch.load(weights_only=True)`; plain pickles through an unpickler
that admits only numpy arrays, numpy scalars/dtypes and Python containers.
"""

import pickle
from pathlib import Path
from typing import Any

import numpy as np


class UntrustedFileError(ValueError):
    """A file could not be read safely (or at all); the message names the file."""


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3 (str -> bytes)
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only numpy arrays and plain containers "
            "are allowed"
        )


def load_pickle(path: str | Path) -> Any:
    """Unpickles numpy arrays and containers (latin1 for Python 2 pickles); nothing else."""
    path = Path(path)
    if not path.is_file():
        raise UntrustedFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UntrustedFileError(f"{path}: the file is empty (0 bytes)")
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, OSError, TypeError) as e:
        raise UntrustedFileError(f"{path}: cannot read as a numpy pickle: {e}") from e


def load_torch(path: str | Path) -> Any:
    """torch.load(weights_only=True) on CPU: tensors and containers only, never code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UntrustedFileError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        if path.stat().st_size == 0:
            raise UntrustedFileError(f"{path}: the file is empty (0 bytes)") from e
        first = (str(e).strip().splitlines() or [""])[0]  # EOFError has no message
        raise UntrustedFileError(
            f"{path}: not a PyTorch checkpoint that loads without executing code "
            f"(torch.load weights_only=True): {type(e).__name__}: {first}"
        ) from e


def to_numpy(state_dict: dict, source: str) -> dict[str, np.ndarray]:
    """{name: torch.Tensor | ndarray} -> {name: ndarray}; anything else is an error."""
    out, bad = {}, []
    for key, value in state_dict.items():
        if hasattr(value, "detach"):
            out[key] = value.detach().cpu().numpy().copy()  # never alias torch memory
        elif isinstance(value, np.ndarray):
            out[key] = value
        else:
            bad.append(f"{key} ({type(value).__name__})")
    if bad:
        raise UntrustedFileError(f"{source}: entries that are not arrays: {', '.join(bad)}")
    return out
