"""Per-clip staging files: the resumable, parallel half of a build.

Each clip's encoded frames (and, once known, its 3DMM coefficients) are written to one
`staging/{split}/{clip}.npz` before the TFDS data set is assembled from them. A clip whose file
exists is not decoded again, so an interrupted build picks up where it stopped; files are
written under a temporary name and renamed, so a killed worker leaves no half-written clip.
No pickles: frames are one uint8 buffer with offsets, metadata a JSON string.

A staged clip is reused only while it is of the current generation: its metadata holds the
`key` it was made from (the source's fingerprint: path, size and mtime of the file or of each
frame in the folder; and every build option that changes the frames: image size, format,
frame rules) and the `coeffs_key` of its coefficients (the regressor variables'
fingerprint). A clip whose key differs is staged again, and `key_change` says why.
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class StagedClip:
    clip: str  # the clip id (FOMM file stem)
    identity: str
    frames: list[bytes]  # encoded images (PNG or JPEG), in time order
    coeffs: np.ndarray | None = None  # [T, 257] float32
    source: str = ""  # where the frames came from (a path, or 'synthetic')
    key: dict | None = None  # what the frames were made from (module docstring)
    coeffs_key: str | None = None  # what the coefficients were made from


def staged_path(staging_dir: Path, split: str, clip: str) -> Path:
    return Path(staging_dir) / split / f"{clip}.npz"


def write_staged(path: Path, clip: StagedClip) -> None:
    """Atomically writes one clip (see the module docstring for the layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(f) for f in clip.frames], np.int64)
    arrays = {
        "frames": np.frombuffer(b"".join(clip.frames), np.uint8),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]),
        "meta": np.array(
            json.dumps(
                {
                    "clip": clip.clip,
                    "identity": clip.identity,
                    "source": clip.source,
                    "key": clip.key,
                    "coeffs_key": clip.coeffs_key,
                }
            )  # fmt: skip
        ),
    }
    if clip.coeffs is not None:
        arrays["coeffs"] = np.asarray(clip.coeffs, np.float32)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def read_staged(path: Path) -> StagedClip:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        buf, offsets = z["frames"].tobytes(), z["offsets"]
        coeffs = z["coeffs"] if "coeffs" in z.files else None
    frames = [buf[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return StagedClip(
        meta["clip"], meta["identity"], frames, coeffs, meta["source"],
        meta.get("key"), meta.get("coeffs_key"),
    )  # fmt: skip


def staged_info(path: Path) -> dict:
    """{'clip', 'identity', 'source', 'num_frames', 'has_coeffs'} without reading the frames."""
    meta = staged_meta(path)
    return {k: meta[k] for k in ("clip", "identity", "source", "num_frames", "has_coeffs")}


def staged_meta(path: Path) -> dict:
    """staged_info plus 'key' and 'coeffs_key' (None in files of older builds)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        meta.update(num_frames=len(z["offsets"]) - 1, has_coeffs="coeffs" in z.files)
    meta.setdefault("key", None)
    meta.setdefault("coeffs_key", None)
    return meta


def file_fingerprint(path: str | os.PathLike) -> dict:
    """A source's identity: its absolute path and the size and mtime of the file, or of every
    file in the folder (a digest of them); a missing path has none."""
    path = Path(path).expanduser().absolute()
    if path.is_file():
        st = path.stat()
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not path.is_dir():
        return {"path": str(path)}
    h = hashlib.sha256()
    count = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}/{st.st_size}/{st.st_mtime_ns}\n".encode())
        count += 1
    return {"path": str(path), "files": count, "digest": h.hexdigest()}


def key_change(old: dict | None, new: dict) -> str:
    """Why a staged clip with key `old` is not the one `new` asks for, in a few words."""
    if old is None:
        return "staged by an older build (no key)"
    old_options, new_options = old.get("options", {}), new.get("options", {})
    changed = [
        f"{k} {old_options.get(k)} -> {new_options.get(k)}"
        for k in sorted(set(old_options) | set(new_options))
        if old_options.get(k) != new_options.get(k)
    ]
    if old.get("source") != new.get("source"):
        changed.insert(0, "source changed")
    return ", ".join(changed) or "key changed"


def clean_staging(staging_dir: Path, keep: set[Path]) -> list[str]:
    """Deletes staged clips not in `keep` (their source is gone) and temporary files of killed
    writers; returns the deleted clips' paths."""
    dropped = []
    keep = {Path(p).absolute() for p in keep}
    for f in sorted(Path(staging_dir).glob("*/*")) if Path(staging_dir).is_dir() else []:
        if f.name.startswith(".") and ".tmp" in f.name:
            f.unlink()
        elif f.suffix == ".npz" and f.absolute() not in keep:
            f.unlink()
            dropped.append(str(f))
    return dropped
