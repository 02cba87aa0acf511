"""BFM files: Deep3DFace's `BFM_model_front.mat` and our converted `.npz`, read with every field
checked (all problems reported at once, naming the file) and written in either schema.

Both readers take data only (scipy.io.loadmat, np.load with allow_pickle=False): no code runs.
"""

from pathlib import Path

import numpy as np

from maskrenderer_jax.face3d.morphable_model import (
    ARRAY_FIELDS,
    STATIC_FIELDS,
    MorphableModel,
    model_from_arrays,
    recentre,
)

# ---------------------------------------------------------------------------------------------
# Validation: one table for both on-disk forms; symbols N (vertices), F (triangles) and the free
# sizes K, M, T are bound by the first field that shows them, then checked everywhere else.
# attribute, .mat field, .mat shape, .npz shape, kind (float | vertex index | triangle index)
_SCHEMA = (
    ("mean_shape", "meanshape", (1, "3N"), ("N", 3), "float"),
    ("id_base", "idBase", ("3N", 80), ("3N", 80), "float"),
    ("exp_base", "exBase", ("3N", 64), ("3N", 64), "float"),
    ("mean_tex", "meantex", (1, "3N"), ("3N",), "float"),
    ("tex_base", "texBase", ("3N", 80), ("3N", 80), "float"),
    ("triangles", "tri", ("F", 3), ("F", 3), "vertex"),
    ("point_buf", "point_buf", ("N", "K"), ("N", "K"), "triangle"),
    ("keypoints", "keypoints", (1, 68), (68,), "vertex"),
    ("front_mask", "frontmask2_idx", ("M", 1), ("M",), "vertex"),
    ("front_triangles", "tri_mask2", ("T", 3), ("T", 3), "vertex"),
    ("skin_mask", "skinmask", (1, "N"), ("N",), "float"),
)


def _bind(expected: tuple, found: tuple, sizes: dict) -> bool:
    """Matches a found shape against a template, binding unknown symbols in `sizes`."""
    if len(expected) != len(found):
        return False
    new = {}
    for want, got in zip(expected, found, strict=True):
        if isinstance(want, int):
            if want != got:
                return False
            continue
        name, factor = (want[1:], 3) if want.startswith("3") else (want, 1)
        value = sizes.get(name, new.get(name))
        if value is None:
            if got % factor or got == 0:
                return False
            new[name] = got // factor
        elif value * factor != got:
            return False
    sizes.update(new)
    return True


def _show(template: tuple, sizes: dict) -> str:
    def dim(d):
        if isinstance(d, int):
            return str(d)
        name, factor = (d[1:], 3) if d.startswith("3") else (d, 1)
        return str(sizes[name] * factor) if name in sizes else d

    text = f"[{', '.join(str(d) for d in template)}]"
    resolved = f"[{', '.join(dim(d) for d in template)}]"
    return text if text == resolved else f"{text} = {resolved}"


def _validated_arrays(raw: dict, source: str, layout: str) -> dict[str, np.ndarray]:
    """Checks every field of a .mat (`layout='mat'`, 1-based) or .npz (0-based) at once and
    returns our 0-based float32/int32 numpy arrays; raises one ValueError listing all
    problems, each naming the field and the expected vs found shape."""
    is_mat = layout == "mat"
    base = 1 if is_mat else 0
    sizes, problems, out = {}, [], {}
    for attr, mat_name, mat_shape, npz_shape, kind in _SCHEMA:
        name, template = (mat_name, mat_shape) if is_mat else (attr, npz_shape)
        if name not in raw:
            problems.append(f"missing field {name!r} (expected shape {_show(template, sizes)})")
            continue
        x = raw[name]
        if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
            what = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            problems.append(f"field {name!r}: expected a numeric array, found {what}")
            continue
        # MATLAB vectors come as rows or columns; Deep3DFace squeezes/reshapes them anyway.
        alternatives = [template]
        if is_mat and 1 in template:
            alternatives.append(template[::-1])
        if not any(_bind(t, x.shape, sizes) for t in alternatives):
            problems.append(
                f"field {name!r}: expected shape {_show(template, sizes)}, found {list(x.shape)}"
            )
            continue
        if kind == "float":
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            if bad:
                problems.append(f"field {name!r}: {bad} non-finite values")
                continue
            out[attr] = x.astype(np.float32)
            continue
        limit_name, limit = ("N", sizes.get("N")) if kind == "vertex" else ("F", sizes.get("F"))
        if kind == "triangle" and limit is not None:
            limit += 1  # Deep3DFace pads point_buf with F (+1 in the file) -> a zero normal
        if x.dtype.kind == "f" and not np.all(np.isfinite(x) & (x == np.round(x))):
            problems.append(f"field {name!r}: index values must be integers")
            continue
        x = x.astype(np.int64) - base
        if limit is not None and x.size and (x.min() < 0 or x.max() >= limit):
            span = f"{base}..{limit - 1 + base}"
            problems.append(
                f"field {name!r}: index values must lie in {span} ({limit_name} = "
                f"{sizes[limit_name]}), found {x.min() + base}..{x.max() + base}"
            )
            continue
        out[attr] = x.astype(np.int32)
    if problems:
        schema = "Deep3DFace BFM_model_front.mat" if is_mat else "converted BFM .npz"
        raise ValueError(
            f"{source}: not a usable {schema} ({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
        )
    out["mean_shape"] = out["mean_shape"].reshape(-1, 3)
    for attr in ("mean_tex", "keypoints", "front_mask", "skin_mask"):
        out[attr] = out[attr].reshape(-1)
    return out


def load_bfm_mat(path: str | Path, recenter: bool = True) -> MorphableModel:
    """Reads Deep3DFace's `BFM_model_front.mat` (scipy.io.loadmat: data only, no code).

    Every field is checked (presence, shape against N = len(meanshape) / 3 and F = len(tri),
    finiteness, index ranges); all problems are reported at once in a ValueError naming the
    file. `recenter` subtracts the mean vertex, as Deep3DFace's default does.
    """
    from scipy import io as sio

    path = Path(path)
    if not path.is_file():  # scipy says only "Reader needs file name or open file-like object"
        raise FileNotFoundError(f"{path}: no such file (--mat expects BFM_model_front.mat)")
    try:
        raw = sio.loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 files are HDF5
        raise ValueError(
            f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported; save as -v7: {e}"
        ) from e
    except Exception as e:  # FileNotFoundError, MatReadError, ValueError, TypeError ...
        raise ValueError(
            f"{path}: cannot read as a MATLAB .mat file: {type(e).__name__}: {e}"
        ) from e
    arrays = _validated_arrays(raw, str(path), "mat")
    if recenter:
        arrays["mean_shape"] = recentre(arrays["mean_shape"])
    return model_from_arrays(arrays)


def save_npz(model: MorphableModel, path: str | Path) -> Path:
    """Writes the converted model (0-based indices, our layout) and its camera constants."""
    path = Path(path)
    arrays = {k: np.asarray(getattr(model, k)) for k in ARRAY_FIELDS}
    arrays.update({k: np.asarray(getattr(model, k)) for k in STATIC_FIELDS})
    with path.open("wb") as f:  # a file object, so numpy does not append '.npz'
        np.savez(f, **arrays)
    return path


def load_npz(path: str | Path) -> MorphableModel:
    """Reads `save_npz`'s file (np.load, allow_pickle=False) with the .mat loader's checks."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    except Exception as e:
        raise ValueError(
            f"{path}: cannot read as an .npz of plain arrays: {type(e).__name__}: {e}"
        ) from e
    arrays = _validated_arrays(raw, str(path), "npz")
    static = {}
    for key in STATIC_FIELDS:
        if key in raw:
            value = raw[key]
            static[key] = (
                tuple(float(v) for v in value.reshape(-1))
                if key == "init_lit"
                else int(value)
                if key == "image_size"
                else float(value)
            )
    return model_from_arrays(arrays, **static)


def write_bfm_mat(model: MorphableModel, path: str | Path) -> Path:
    """Writes `model` as a .mat in the schema of Deep3DFace's BFM_model_front.mat: meanshape
    [1, 3N], idBase [3N, 80], exBase [3N, 64], meantex [1, 3N], texBase [3N, 80], and 1-based
    tri [F, 3], point_buf [N, 8] (padding F + 1), keypoints [1, 68], frontmask2_idx [M, 1],
    tri_mask2 [T, 3], plus skinmask [1, N]."""
    from scipy import io as sio

    def floats(a):
        return np.asarray(a, np.float32)

    def one_based(a):
        return np.asarray(a, np.int32) + 1

    path = Path(path)
    sio.savemat(
        path,
        {
            "meanshape": floats(model.mean_shape).reshape(1, -1),
            "idBase": floats(model.id_base),
            "exBase": floats(model.exp_base),
            "meantex": floats(model.mean_tex).reshape(1, -1),
            "texBase": floats(model.tex_base),
            "tri": one_based(model.triangles),
            "point_buf": one_based(model.point_buf),
            "keypoints": one_based(model.keypoints).reshape(1, -1),
            "frontmask2_idx": one_based(model.front_mask).reshape(-1, 1),
            "tri_mask2": one_based(model.front_triangles),
            "skinmask": floats(model.skin_mask).reshape(1, -1),
        },
    )
    return path
