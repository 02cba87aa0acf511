"""Strict mapping between Flax variables and PyTorch state dicts.

Flax module names echo the PyTorch attribute names, so the mapping is data: submodule renames
(`down_blocks_0` -> `down_blocks.0`) and leaf rules (`params/kernel` -> `weight`, with the
layout transform), plus one hook (a spectrally normalised conv stores `weight_orig`). Every
source key must be consumed and every Flax leaf filled with the right shape and dtype;
otherwise one ConversionError lists every mismatch.
"""

import re
from dataclasses import dataclass

import numpy as np

MODULE_RENAMES = (
    (re.compile(r"^(down_blocks|up_blocks|up|occlusion|attention)_(\d+)$"), r"\1.\2"),
    (re.compile(r"^bottleneck_(r\d+)$"), r"bottleneck.\1"),
    (re.compile(r"^discs_(.+)$"), r"discs.\1"),
    # torchvision ResNet (nets/resnet.py) and Deep3DFace's heads: nn.Sequential/ModuleList items.
    (re.compile(r"^(layer\d+|downsample|final_layers)_(\d+)$"), r"\1.\2"),
    # torchvision VGG19 (nets/vgg19.py): `features` is an nn.Sequential.
    (re.compile(r"^features_(\d+)$"), r"features.\1"),
    # LPIPS heads (nets/lpips.py): `lin<k>.model.1` = nn.Sequential(Dropout, Conv2d)[1].
    (re.compile(r"^model_1$"), "model.1"),
)

LEAF_RULES = {  # (Flax collection, Flax leaf name) -> PyTorch leaf name
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("batch_stats", "u"): "weight_u",
    ("batch_stats", "v"): "weight_v",
    ("params", "negative_slope"): "weight",  # nn.PReLU(C) of ArcFace's IResNet (nets/arcface.py)
}

# PyTorch keys that carry no value for us: BatchNorm's step counter (FOMM's momentum is fixed).
IGNORED_SUFFIXES = (".num_batches_tracked",)


class ConversionError(ValueError):
    """A checkpoint does not fit the model; the message lists every mismatch."""


def conv_oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))


def conv_hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (3, 2, 0, 1))


def linear_t(w: np.ndarray) -> np.ndarray:
    return np.transpose(w)


def identity(w: np.ndarray) -> np.ndarray:
    return w


@dataclass(frozen=True)
class Entry:
    collection: str
    flax_path: tuple[str, ...]
    torch_key: str
    flax_shape: tuple[int, ...]
    to_torch: object  # transform Flax -> PyTorch
    from_torch: object  # transform PyTorch -> Flax

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return self.to_torch(np.empty(self.flax_shape, np.uint8)).shape


def torch_module_path(flax_path: tuple[str, ...]) -> str:
    names = []
    for name in flax_path:
        for pattern, replacement in MODULE_RENAMES:
            name = pattern.sub(replacement, name)
        names.append(name)
    return ".".join(names)


def layout(abstract_variables: dict) -> list[Entry]:
    """One Entry per Flax leaf of {'params': ..., 'batch_stats': ...} (arrays or shapes)."""
    entries = []
    spectral = {
        path[:-1]
        for path, _ in _flatten(abstract_variables.get("batch_stats", {}))
        if path[-1] == "u"
    }
    for collection, tree in abstract_variables.items():
        for path, leaf in _flatten(tree):
            module, name = path[:-1], path[-1]
            if (collection, name) not in LEAF_RULES:
                raise ConversionError(
                    f"no PyTorch rule for Flax leaf {collection}/{'/'.join(path)}"
                )
            torch_leaf = LEAF_RULES[(collection, name)]
            if collection == "params" and name == "kernel" and module in spectral:
                torch_leaf = "weight_orig"  # hook: torch.nn.utils.spectral_norm
            to_t, from_t = identity, identity
            if name == "kernel" and len(leaf.shape) == 4:
                to_t, from_t = conv_hwio_to_oihw, conv_oihw_to_hwio
            elif name == "kernel" and len(leaf.shape) == 2:
                to_t, from_t = linear_t, linear_t
            key = f"{torch_module_path(module)}.{torch_leaf}" if module else torch_leaf
            entries.append(Entry(collection, path, key, tuple(leaf.shape), to_t, from_t))
    return entries


def from_torch(
    state_dict: dict[str, np.ndarray],
    abstract_variables: dict,
    *,
    derived: dict[str, np.ndarray] | None = None,
    source: str = "checkpoint",
) -> dict:
    """PyTorch state dict (numpy values) -> Flax variables shaped like `abstract_variables`.

    `derived` holds buffers that the Flax model computes rather than stores (FOMM's anti-alias
    kernel): they must be present and equal. Raises ConversionError listing every missing,
    unexpected and mismatched key.
    """
    derived = derived or {}
    entries = layout(abstract_variables)
    expected = {e.torch_key: e for e in entries}
    keys = set(state_dict)
    missing = sorted((set(expected) | set(derived)) - keys)
    ignorable = {k for k in keys if k.endswith(IGNORED_SUFFIXES)}
    unexpected = sorted(keys - set(expected) - set(derived) - ignorable)
    mismatched = []
    for key in sorted(keys & set(expected)):
        value, entry = state_dict[key], expected[key]
        if tuple(value.shape) != entry.torch_shape:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, model {entry.torch_shape}")
        elif value.dtype != np.float32:
            mismatched.append(f"{key}: dtype {value.dtype}, model float32")
    nonfinite = non_finite(state_dict)
    for key in sorted(keys & set(derived)):
        value = np.asarray(state_dict[key])
        if value.shape != derived[key].shape or not np.allclose(value, derived[key], atol=1e-6):
            mismatched.append(
                f"{key}: fixed buffer differs from the model's (shape "
                f"{value.shape} vs {derived[key].shape}); another scale_factor?"
            )
    if missing or unexpected or mismatched or nonfinite:
        lines = [f"{source} does not fit the model:"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mismatched", mismatched),
            ("with NaN or infinite values", nonfinite),
        ):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise ConversionError("\n".join(lines))

    variables: dict = {}
    for entry in entries:
        node = variables.setdefault(entry.collection, {})
        for name in entry.flax_path[:-1]:
            node = node.setdefault(name, {})
        node[entry.flax_path[-1]] = np.ascontiguousarray(
            entry.from_torch(state_dict[entry.torch_key])
        )
    return variables


def non_finite(arrays: dict[str, np.ndarray]) -> list[str]:
    """'key: n of m values NaN/inf' for each floating array with a non-finite value."""
    bad = []
    for key, value in sorted(arrays.items()):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            count = int(value.size - np.count_nonzero(np.isfinite(value)))
            if count:
                bad.append(f"{key}: {count} of {value.size} values NaN/inf")
    return bad


def to_torch(
    variables: dict, *, derived: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Flax variables -> PyTorch state dict (numpy), derived buffers and BN counters added.
    Raises ConversionError naming every tensor with a NaN or infinite value."""
    out = {}
    for entry in layout(variables):
        node = variables[entry.collection]
        for name in entry.flax_path:
            node = node[name]
        out[entry.torch_key] = np.ascontiguousarray(entry.to_torch(np.asarray(node, np.float32)))
        if entry.torch_key.endswith(".running_mean"):
            out[entry.torch_key[: -len("running_mean")] + "num_batches_tracked"] = np.array(
                0, np.int64
            )
    out.update(derived or {})
    bad = non_finite(out)
    if bad:
        raise ConversionError(
            "refusing to export non-finite weights:\n" + "\n".join(f"  {b}" for b in bad)
        )
    return out


def _flatten(tree: dict, prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            yield from _flatten(value, (*prefix, str(key)))
        else:
            yield (*prefix, str(key)), value
