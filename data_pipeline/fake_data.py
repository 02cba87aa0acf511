"""Small FOMM-layout data sets made on the spot, for tests, benchmarks and trying the tools.

Frames encode where they came from: channel 0 is 10 * identity + 60 (clips of one person
share it), channel 1 is 10 * clip + 40, channel 2 is 8 * frame + 20, plus a horizontal ramp
(+0..48 left to right on every channel) so a flip is visible. Smooth, so mp4 keeps it.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline import naming
from maskrenderer_jax import media


def fake_frame(identity: int, clip: int, frame: int, size: int) -> np.ndarray:
    """[S, S, 3] uint8, see the module docstring."""
    base = np.array([10 * identity + 60, 10 * clip + 40, 8 * frame + 20], np.float32)
    ramp = np.linspace(0, 48, size, dtype=np.float32)[None, :, None]
    return np.clip(base + np.broadcast_to(ramp, (size, size, 1)), 0, 255).astype(np.uint8)


def decode_fake(image: np.ndarray) -> tuple[int, int, int, bool]:
    """(identity, clip, frame, flipped) from a fake frame (float [0, 1] or uint8)."""
    image = np.asarray(image, np.float32)
    image = image * 255 if image.max() <= 1.0 else image
    left, right = (
        image[:, : image.shape[1] // 8].mean((0, 1)),
        image[:, -image.shape[1] // 8 :].mean((0, 1)),
    )
    base = np.minimum(left, right) - 3  # the ramp's mean over the darker eighth is ~3
    flipped = bool(left.mean() > right.mean())
    identity, clip, frame = np.round((base - [60, 40, 20]) / [10, 10, 8]).astype(int)
    return int(identity), int(clip), int(frame), flipped


def clip_stem(identity: int, clip: int, num_frames: int) -> str:
    return naming.fomm_clip_name(
        f"id{identity:05d}", f"vid{clip:02d}", 100 * clip, 100 * clip + num_frames
    )


def write_fomm_layout(
    root: str | Path,
    *,
    identities: dict[str, int] | None = None,
    clips_per_identity: int = 2,
    num_frames: int = 8,
    size: int = 64,
    video_format: str = "png",
) -> Path:
    """Writes root/{train,test}/ID#VID#START#END(.mp4 | /frame.png); identities maps a split
    to how many identities it gets (numbered on across splits). Returns root."""
    root = Path(root)
    identities = identities or {"train": 3, "test": 2}
    first = 0
    for split, count in identities.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(first, first + count):
            for c in range(clips_per_identity):
                frames = [fake_frame(i, c, t, size) for t in range(num_frames)]
                stem = clip_stem(i, c, num_frames)
                if video_format == "mp4":
                    media.encode_video(root / split / f"{stem}.mp4", frames)
                else:
                    folder = root / split / stem
                    folder.mkdir(exist_ok=True)
                    for t, frame in enumerate(frames):
                        Image.fromarray(frame).save(folder / f"{t:07d}.png")
        first += count
    return root
