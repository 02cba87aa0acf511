"""Builds a TFDS data set of face video frames.

python -m data_pipeline.build --dataset voxceleb --manual_dir PATH --data_dir DIR \
    [--image_size 256] [--num_workers 2] [--recon_variables VARS]
python -m data_pipeline.build --dataset synthetic_heads --data_dir DIR [--image_size 64]

Two stages: every clip is decoded, checked and encoded into a staging file in parallel
(resumable: staged clips are not redone while their source and the options that shape them
are unchanged, see data_pipeline.staging; bad clips are skipped with a warning), optionally
given 3DMM coefficients by Deep3DFace's regressor (--recon_variables), then the TFDS data set
(array_record) is written from the staged clips unless it is already up to date. A report
(clips, frames, identities per split; skipped files and why) is printed and written to
DIR/NAME/build_report.json.
"""

import argparse
import json
import logging
import os
from pathlib import Path

from data_pipeline import parallel, staging, synthetic_heads, tfds_writer, voxceleb
from data_pipeline.config import synthetic_config
from data_pipeline.report import BuildReport, SplitCounts
from maskrenderer_jax import cli_errors

DATASETS = ("voxceleb", "synthetic_heads")


def _stage_voxceleb(report, manual_dir, staging_dir, num_workers, **settings):
    if manual_dir is None or not Path(manual_dir).is_dir():
        raise FileNotFoundError(f"--manual_dir {manual_dir}: not a directory")
    tasks = voxceleb.list_clips(Path(manual_dir), staging_dir, report, **settings)
    todo = []
    for task in tasks:
        staged = Path(task.staged)
        if not staged.exists():
            todo.append(task)
            continue
        try:
            old = staging.staged_meta(staged)["key"]
        except Exception as e:  # noqa: BLE001 - an unreadable staging file is made again
            old = {"unreadable": f"{type(e).__name__}: {e}"}
        if old != json.loads(task.key):
            report.restage(task.path, staging.key_change(old, json.loads(task.key)))
            todo.append(task)
    logging.info("%d clips listed, %d to stage", len(tasks), len(todo))
    failed = set()
    reasons = parallel.parallel_map(voxceleb.stage_clip, todo, num_workers)
    for task, reason in zip(todo, reasons, strict=True):
        if reason is not None:
            report.skip(task.path, reason)
            failed.add(task.staged)
            Path(task.staged).unlink(missing_ok=True)  # a stale generation must not stay
    return {
        split: [Path(t.staged) for t in tasks if t.split == split and t.staged not in failed]
        for split in voxceleb.PARTITIONS
    }


def build(
    dataset: str,
    data_dir: str | os.PathLike,
    *,
    manual_dir: str | os.PathLike | None = None,
    name: str | None = None,
    image_size: int | None = None,
    image_format: str = "png",
    num_workers: int = 2,
    min_frames: int = 2,
    recon_variables: str | os.PathLike | None = None,
    recon_batch_size: int = 16,
    synthetic: dict | None = None,
) -> BuildReport:
    """Builds (or resumes, or confirms up to date) data_dir/name; returns the report.

    Raises ValueError when no usable clip is left (the report is still written).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    name = name or dataset
    root = Path(data_dir).expanduser() / name
    staging_dir = root / "staging"
    report = BuildReport(dataset=name)
    metadata = {"dataset": dataset}
    if dataset == "voxceleb":
        image_size = image_size or 256
        splits = _stage_voxceleb(
            report, manual_dir, staging_dir, num_workers,
            image_size=image_size, image_format=image_format, min_frames=min_frames,
        )  # fmt: skip
    else:
        config = synthetic_config(**(synthetic or {}))
        if image_size:
            config.image_size = image_size
        image_size = config.image_size
        metadata["synthetic"] = config.to_dict()  # what sources.open_split checks a config by
        splits = synthetic_heads.stage_synthetic(
            staging_dir, config, image_format=image_format, report=report
        )
    report.dropped = staging.clean_staging(
        staging_dir, {p for paths in splits.values() for p in paths}
    )
    for path in report.dropped:
        logging.info("dropping %s: its source is gone", path)

    if recon_variables is not None:
        from data_pipeline import recon_coeffs  # JAX and the ResNet only when asked for

        recon_coeffs.fill_staged_coeffs(
            [p for paths in splits.values() for p in paths], recon_variables, recon_batch_size
        )
    infos = {s: [staging.staged_info(p) for p in paths] for s, paths in splits.items()}
    has = [i["has_coeffs"] for split_infos in infos.values() for i in split_infos]
    if dataset == "voxceleb" and recon_variables is None:
        has = [False] * len(has)  # coefficients of an earlier build are not asked for now
    report.has_coeffs = bool(has) and all(has)
    if any(has) and not all(has):
        logging.warning(
            "only %d of %d clips have coefficients: leaving them out", sum(has), len(has)
        )
    for split, split_infos in infos.items():
        if split_infos:
            report.splits[split] = SplitCounts(
                clips=len(split_infos),
                frames=sum(i["num_frames"] for i in split_infos),
                identities=len({i["identity"] for i in split_infos}),
            )
    root.mkdir(parents=True, exist_ok=True)
    report.removed_incomplete = tfds_writer.remove_incomplete(root)
    try:
        version_dir, report.assembled = tfds_writer.write_dataset(
            root.parent, name, splits,
            image_size=image_size, image_format=image_format, has_coeffs=report.has_coeffs,
            extra_metadata=metadata,
        )  # fmt: skip
        report.dataset_dir = str(version_dir)
    finally:
        report.write(root / "build_report.json")
    return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write into")
    parser.add_argument("--manual_dir", help="voxceleb: the FOMM-layout folder (train/, test/)")
    parser.add_argument("--name", help="data set name under data_dir (default: --dataset)")
    parser.add_argument(
        "--image_size",
        type=int,
        help="voxceleb: frame size to require "
        "(256); synthetic_heads: render size (64, 128 or 256; default 64)",
    )
    parser.add_argument("--image_format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min_frames", type=int, default=2, help="shorter clips are skipped")
    parser.add_argument(
        "--recon_variables",
        help="ReconNet variables (params_io) to fill the 3DMM coefficients of every frame",
    )
    parser.add_argument("--recon_batch_size", type=int, default=16)
    defaults = synthetic_config()
    for key in ("train_identities", "test_identities", "clips_per_identity",
                "frames_per_clip", "seed"):  # fmt: skip
        parser.add_argument(f"--{key}", type=int, default=defaults[key],
                            help="synthetic_heads size/seed")  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> BuildReport:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    synthetic = {k: getattr(args, k) for k in ("train_identities", "test_identities",
                 "clips_per_identity", "frames_per_clip", "seed")}  # fmt: skip
    report = build(
        args.dataset, args.data_dir, manual_dir=args.manual_dir, name=args.name,
        image_size=args.image_size, image_format=args.image_format,
        num_workers=args.num_workers, min_frames=args.min_frames,
        recon_variables=args.recon_variables, recon_batch_size=args.recon_batch_size,
        synthetic=synthetic,
    )  # fmt: skip
    print(report.summary())
    return report


if __name__ == "__main__":
    cli_errors.run(main)
