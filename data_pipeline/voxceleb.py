"""The FOMM-layout source: `{train,test}/{person_id}#{video_id}#{start}#{end}.mp4` or a folder
of frames per clip (AliaksandrSiarohin/video-preprocessing's output), listed into per-clip
staging tasks, each decoded, checked and re-encoded by `stage_clip` (in a worker process)."""

import dataclasses
import json
from pathlib import Path

from data_pipeline import naming, staging
from data_pipeline.report import BuildReport
from maskrenderer_jax import media

PARTITIONS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class ClipTask:
    path: str  # an .mp4 file or a folder of frames
    split: str
    clip: str
    identity: str
    staged: str  # the staging file to write
    image_size: int
    image_format: str
    min_frames: int
    key: str = "{}"  # JSON of the staging key (staging module docstring)


def clip_key(path: Path, image_size: int, image_format: str, min_frames: int) -> dict:
    """What a staged clip of `path` is made from: the source's fingerprint and the options
    that change its frames."""
    options = {"image_size": image_size, "image_format": image_format, "min_frames": min_frames}
    return {"source": staging.file_fingerprint(path), "options": options}


class NameCollisionError(ValueError):
    """Two inputs of one split would be the same clip (X.mp4 and a frame folder X)."""


def list_clips(
    manual_dir: Path,
    staging_dir: Path,
    report: BuildReport,
    *,
    image_size: int,
    image_format: str,
    min_frames: int,
) -> list[ClipTask]:
    """One task per clip of each partition, sorted by (split, clip); entries whose name does
    not parse, and missing or empty partitions, go to the report. Two entries with one clip
    name (X.mp4 and a frame folder X) raise NameCollisionError naming every such pair."""
    tasks, collisions = [], []
    for split in PARTITIONS:
        folder = Path(manual_dir) / split
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        if not entries:
            report.empty_partitions.append(split)
            report.skip(folder, "empty or missing partition")
            continue
        seen: dict[str, Path] = {}
        for entry in entries:
            if entry.name.startswith("."):
                continue  # editor/OS droppings and our own temporary files
            if entry.is_file() and entry.suffix.lower() not in naming.VIDEO_SUFFIXES:
                report.skip(entry, f"not a clip (an {entry.suffix or 'extensionless'} file)")
                continue
            stem = entry.stem if entry.is_file() else entry.name
            try:
                name = naming.parse_clip_name(stem)
            except ValueError as e:
                report.skip(entry, str(e))
                continue
            if stem in seen:
                collisions.append(f"{seen[stem]} and {entry}")
                continue
            seen[stem] = entry
            staged = staging.staged_path(staging_dir, split, stem)
            key = clip_key(entry, image_size, image_format, min_frames)
            tasks.append(
                ClipTask(
                    str(entry), split, stem, name.person_id, str(staged),
                    image_size, image_format, min_frames, json.dumps(key, sort_keys=True),
                )
            )  # fmt: skip
    if collisions:
        raise NameCollisionError(
            "two inputs are the same clip (a clip file and a frame folder of one name); "
            "remove or rename one of each pair: " + "; ".join(collisions)
        )
    return tasks


def stage_clip(task: ClipTask) -> str | None:
    """Decodes and checks one clip, writes its staging file; returns None, or why it was
    skipped. Never raises for a bad clip: one bad file must not abort a build."""
    try:
        path = Path(task.path)
        if path.is_dir():
            files = media.frame_files(path)
            # PNG frames that pass the checks are stored as they are (no re-encoding).
            checked = [media.read_frame_file(f, task.image_size) for f in files]
            if task.image_format == "png" and all(f.suffix == ".png" for f in files):
                encoded = [data for _, data in checked]
            else:
                encoded = [media.encode_image(a, task.image_format) for a, _ in checked]
        else:
            frames = media.decode_video(path)
            for i, frame in enumerate(frames):
                media.check_frame_size(frame, task.image_size, f"frame {i}")
            encoded = [media.encode_image(f, task.image_format) for f in frames]
        if len(encoded) < task.min_frames:
            raise media.ClipError(f"{len(encoded)} frames, need at least {task.min_frames}")
        clip = staging.StagedClip(
            task.clip, task.identity, encoded, source=task.path, key=json.loads(task.key)
        )
        staging.write_staged(Path(task.staged), clip)
        return None
    except media.ClipError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a decoder bug on one file must not stop the rest
        return f"unexpected {type(e).__name__}: {e}"
