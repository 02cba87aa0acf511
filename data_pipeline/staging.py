"""Per-clip staging files: the resumable, parallel half of a build.

Each clip's encoded frames (and, once known, its 3DMM coefficients) are written to one
`staging/{split}/{clip}.npz` before the TFDS data set is assembled from them. A clip whose file
exists is not decoded again, so an interrupted build picks up where it stopped; files are
written under a temporary name and renamed, so a killed worker leaves no half-written clip.
No pickles: frames are one uint8 buffer with offsets, metadata a JSON string.
"""

import dataclasses
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
            json.dumps({"clip": clip.clip, "identity": clip.identity, "source": clip.source})
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
    return StagedClip(meta["clip"], meta["identity"], frames, coeffs, meta["source"])


def staged_info(path: Path) -> dict:
    """{'clip', 'identity', 'num_frames', 'has_coeffs'} without reading the frames."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        meta.update(num_frames=len(z["offsets"]) - 1, has_coeffs="coeffs" in z.files)
    return meta
