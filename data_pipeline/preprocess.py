"""Crops raw videos into FOMM-layout clips by vox-metadata.csv's boxes (as
AliaksandrSiarohin/video-preprocessing's load_videos.py does), with ffmpeg through PyAV.

python -m data_pipeline.preprocess --metadata vox-metadata.csv --raw_dir R --out_dir O \
    [--image_size 256] [--format mp4|png] [--num_workers N]

Metadata columns: video_id, start, end, bbox ('l-t-r-b' at the reference resolution width x
height), fps (reference), width, height, partition, person_id. Raw videos are R/{video_id}.mp4.
Frame i of a raw video at `fps` belongs to a chunk when i * ref_fps is in [start, end) *
fps; the box is rescaled from the reference resolution to the video's, the crop resized to
image_size (antialiased bilinear) and written to O/{partition}/{person_id}#{video_id}#{start:06}
#{end:06}.mp4 (or a folder of PNGs). Existing outputs are kept (resumable); a missing or broken
raw video, or a chunk with no frames, is skipped with a warning and reported.
"""

import argparse
import csv
import dataclasses
import logging
import os
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from data_pipeline import naming, parallel
from maskrenderer_jax import cli_errors, media


@dataclasses.dataclass(frozen=True)
class Chunk:
    person_id: str
    video_id: str
    start: int
    end: int
    bbox: tuple[int, int, int, int]  # left, top, right, bottom at the reference resolution
    ref_fps: float
    ref_size: tuple[int, int]  # width, height
    partition: str

    @property
    def stem(self) -> str:
        # video-preprocessing reverses '#'-joined video ids ('#'.join(id.split('#')[::-1])).
        video = "#".join(self.video_id.split("#")[::-1])
        return naming.fomm_clip_name(self.person_id, video, self.start, self.end)


METADATA_COLUMNS = ("video_id", "start", "end", "bbox", "fps", "width", "height", "partition")


def read_metadata(path: str | os.PathLike) -> dict[str, list[Chunk]]:
    """vox-metadata.csv -> the chunks of each raw video; ValueError naming the file, the row
    (1-based, the header is row 1) and the column of anything that does not parse."""
    chunks = defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in METADATA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; the header has "
                f"{reader.fieldnames} (FOMM's vox-metadata.csv has {', '.join(METADATA_COLUMNS)})"
            )
        for row_number, row in enumerate(reader, start=2):
            column = "bbox"
            try:
                bbox = tuple(int(float(v)) for v in row["bbox"].split("-"))
                if len(bbox) != 4:
                    raise ValueError("not 4 numbers l-t-r-b")
                values = {}
                for column, parse in (("start", int), ("end", int), ("fps", float),
                                      ("width", int), ("height", int)):  # fmt: skip
                    values[column] = parse(row[column])
            except (ValueError, TypeError, AttributeError) as e:
                raise ValueError(
                    f"{path}, row {row_number}, column {column}: {row.get(column)!r} does not "
                    f"parse ({e})"
                ) from None
            chunks[row["video_id"]].append(
                Chunk(
                    person_id=row.get("person_id", ""), video_id=row["video_id"],
                    start=values["start"], end=values["end"], bbox=bbox,
                    ref_fps=values["fps"], ref_size=(values["width"], values["height"]),
                    partition=row["partition"],
                )
            )  # fmt: skip
    return dict(chunks)


def crop_box(chunk: Chunk, width: int, height: int) -> tuple[int, int, int, int]:
    """The chunk's box at a frame size of width x height (truncating, as the reference),
    clipped to the frame."""
    sx, sy = chunk.ref_size[0] / width, chunk.ref_size[1] / height
    left, top, right, bottom = chunk.bbox
    left, right = int(left / sx), int(right / sx)
    top, bottom = int(top / sy), int(bottom / sy)
    return max(left, 0), max(top, 0), min(right, width), min(bottom, height)


@dataclasses.dataclass(frozen=True)
class VideoTask:
    raw: str
    chunks: tuple[Chunk, ...]
    out_dir: str
    image_size: int
    video_format: str


def output_path(task: VideoTask, chunk: Chunk) -> Path:
    suffix = ".mp4" if task.video_format == "mp4" else ""
    return Path(task.out_dir) / chunk.partition / f"{chunk.stem}{suffix}"


def crop_video(task: VideoTask) -> list[tuple[str, str | None]]:
    """Decodes one raw video once and writes each of its chunks not written yet; returns
    (output path, None or why it was skipped) per chunk."""
    todo = [c for c in task.chunks if not output_path(task, c).exists()]
    if not todo:
        return []
    frames = {c: [] for c in todo}
    try:
        with av.open(task.raw) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or Fraction(25))
            for i, frame in enumerate(container.decode(stream)):
                inside = [c for c in todo if c.start * fps <= i * c.ref_fps < c.end * fps]
                if not inside:
                    continue
                image = frame.to_image()  # RGB PIL image
                for c in inside:
                    box = crop_box(c, image.width, image.height)
                    crop = image.crop(box).resize((task.image_size,) * 2, Image.BILINEAR)
                    frames[c].append(np.asarray(crop))
    except (av.error.FFmpegError, OSError, IndexError) as e:
        return [(str(output_path(task, c)), f"raw video {task.raw}: {e}") for c in todo]
    results = []
    for chunk in todo:
        path = output_path(task, chunk)
        if not frames[chunk]:
            results.append((str(path), f"no frames of {task.raw} in [{chunk.start}, {chunk.end})"))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if task.video_format == "mp4":
            media.encode_video(path, frames[chunk], fps=round(chunk.ref_fps))
        else:
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            for t, frame in enumerate(frames[chunk]):
                Image.fromarray(frame).save(tmp / f"{t:07d}.png")
            tmp.rename(path)
        results.append((str(path), None))
    return results


def preprocess(
    metadata: str | os.PathLike,
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_size: int = 256,
    video_format: str = "mp4",
    num_workers: int = 1,
) -> dict:
    """Runs the crop over every video of the metadata; returns {'written': [...], 'skipped':
    [{'path', 'reason'}], 'existing': n}."""
    report = {"written": [], "skipped": [], "existing": 0}
    tasks = []
    for video_id, chunks in sorted(read_metadata(metadata).items()):
        raw = Path(raw_dir) / f"{video_id.split('#')[0]}.mp4"
        task = VideoTask(str(raw), tuple(chunks), str(out_dir), image_size, video_format)
        if not raw.exists():
            for chunk in chunks:
                logging.warning("skipping %s: raw video %s missing", chunk.stem, raw)
                report["skipped"].append({"path": str(output_path(task, chunk)),
                                          "reason": f"raw video {raw} missing"})  # fmt: skip
            continue
        tasks.append(task)
    outcomes = parallel.parallel_map(crop_video, tasks, num_workers)
    for task, results in zip(tasks, outcomes, strict=True):
        report["existing"] += len(task.chunks) - len(results)
        for path, reason in results:
            if reason is None:
                report["written"].append(path)
            else:
                logging.warning("skipping %s: %s", path, reason)
                report["skipped"].append({"path": path, "reason": reason})
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.preprocess",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--metadata", required=True, help="vox-metadata.csv")
    parser.add_argument("--raw_dir", required=True, help="folder of {video_id}.mp4")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--format", choices=("mp4", "png"), default="mp4")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    report = preprocess(args.metadata, args.raw_dir, args.out_dir, image_size=args.image_size,
                        video_format=args.format, num_workers=args.num_workers)  # fmt: skip
    print(f"written {len(report['written'])} clips, kept {report['existing']} existing, "
          f"skipped {len(report['skipped'])}")  # fmt: skip
    for s in report["skipped"]:
        print(f"  {s['path']}: {s['reason']}")
    return report


if __name__ == "__main__":
    cli_errors.run(main)
