"""Training input pipeline throughput (data_pipeline.make_train_iter) on this machine.

python -m benchmarks.input_pipeline [--sizes 256 64] [--workers 0 2] [--batches N] [--write]

A FOMM-layout set of PNG frames is made in a temporary folder (8 identities x 2 clips x 16
frames per size; frames are smooth noise plus grain, so PNGs are about the size of real face
crops) and built with data_pipeline.build. Timed: batches of 8 examples (source, driving,
cross driver: 3 PNG decodes, flip and colour jitter each), after 2 warm-up batches, as
samples/s. --write replaces the `## Input pipeline` section of BENCHMARKS.md.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import report
from data_pipeline import build, naming, train_iter
from data_pipeline.config import data_config

SECTION = "## Input pipeline"
BATCH = 8


def textured_frame(rng: np.random.Generator, size: int) -> np.ndarray:
    """[S, S, 3] uint8: upsampled coarse colour noise plus pixel grain (sensor-like)."""
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((size, size), Image.BICUBIC), np.float32)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def make_dataset(root: Path, size: int) -> Path:
    rng = np.random.default_rng(size)
    for split, identities in (("train", range(8)), ("test", range(8, 9))):
        for i in identities:
            for c in range(2):
                folder = root / "raw" / split / naming.fomm_clip_name(f"id{i:05d}", f"v{c}", 0, 16)
                folder.mkdir(parents=True)
                for t in range(16):
                    Image.fromarray(textured_frame(rng, size)).save(folder / f"{t:07d}.png")
    build.build("voxceleb", root / "tfds", manual_dir=root / "raw", image_size=size, num_workers=2)
    return root / "tfds"


def samples_per_second(data_dir: Path, size: int, workers: int, batches: int) -> float:
    config = data_config(dataset="voxceleb", data_dir=str(data_dir), image_size=size,
                         batch_size=BATCH, num_workers=workers, num_repeats=100)  # fmt: skip
    iterator = train_iter.make_train_iter(config)
    try:
        for _ in range(2):  # warm-up: worker start, first reads
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        return batches * BATCH / (time.perf_counter() - start)
    finally:
        iterator.close()


def table(results: dict[tuple[int, int], float]) -> str:
    lines = ["| image size | workers | samples/s | ms/batch of 8 |", "|---:|---:|---:|---:|"]
    for (size, workers), rate in results.items():
        lines.append(f"| {size}² | {workers} | {rate:.1f} | {1e3 * BATCH / rate:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.input_pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)

    start_facts = report.facts()  # load average before we add to it
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            data_dir = make_dataset(Path(tmp) / str(size), size)
            for workers in args.workers:
                results[size, workers] = samples_per_second(data_dir, size, workers, args.batches)
                print(f"{size}² workers={workers}: {results[size, workers]:.1f} samples/s")
    intro = (
        f"Training batches of {BATCH} (source, driving, cross driver: 3 PNG decodes, "
        "horizontal flip and colour jitter per example) from a TFDS array_record set on "
        f"local disk, {args.batches} timed batches after 2 warm-up ones. Workers are "
        "grain processes (0: decoding in the calling process, 2 reading threads)."
    )
    report.publish(SECTION, intro, table(results), start_facts, args.write)


if __name__ == "__main__":
    main()
