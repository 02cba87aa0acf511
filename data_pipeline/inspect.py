"""Looks at training batches: per-batch statistics and a PNG grid (source | driving | cross).

python -m data_pipeline.inspect --config configs/tiny.py --num_batches 4 --out grid.png
python -m data_pipeline.inspect --dataset voxceleb --data_dir DIR --image_size 256 --out grid.png

--config takes a config file (path[:arg]) whose get_config() has a `data` section; without
one, --dataset/--data_dir (and the other flags) make the section with data_config().
"""

import argparse

import numpy as np

from data_pipeline.config import data_config
from data_pipeline.train_iter import make_train_iter
from maskrenderer_jax import cli_errors, media, output_files


def batch_statistics(batch: dict) -> dict:
    """Numbers that catch pipeline mistakes: ranges, how different the pairs are, identity
    mixing, augmentation rates."""
    stats = {}
    for key in ("source", "driving", "cross_driving"):
        x = batch[key]
        stats[key] = f"mean {x.mean():.3f} std {x.std():.3f} min {x.min():.3f} max {x.max():.3f}"
    stats["|source - driving|"] = f"{np.abs(batch['source'] - batch['driving']).mean():.4f}"
    stats["|source - cross|"] = f"{np.abs(batch['source'] - batch['cross_driving']).mean():.4f}"
    same = np.mean(batch["source_identity"] == batch["cross_identity"])
    stats["identities"] = (
        f"{len(np.unique(batch['source_identity']))} distinct in {len(batch['source'])}; "
        f"cross == source identity: {same:.0%}"
    )
    stats["flipped"] = f"{np.mean(batch['flipped']):.0%}"
    if "source_coeffs" in batch:
        c = batch["source_coeffs"]
        stats["source_coeffs"] = (
            f"mean {c.mean():.3f} std {c.std():.3f} |max| {np.abs(c).max():.3f}"
        )
    return stats


def grid(batch: dict, rows: int = 8) -> np.ndarray:
    """[rows * H, 3 * W, 3] uint8: one example per row, source | driving | cross driver."""
    rows = min(rows, len(batch["source"]))
    columns = ("source", "driving", "cross_driving")
    return media.image_grid([np.stack([batch[k][i] for k in columns]) for i in range(rows)])


def load_data_section(args):
    if args.config:
        from configs import common

        config = common.load_config(args.config)
        if "data" not in config:
            raise SystemExit(f"{args.config} has no `data` section; pass --dataset/--data_dir")
        return config.data
    overrides = {k: getattr(args, k) for k in ("dataset", "data_dir", "image_size",
                 "batch_size", "seed", "num_workers") if getattr(args, k) is not None}  # fmt: skip
    if args.name:
        overrides["name"] = args.name
    return data_config(**overrides)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.inspect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="config file (path[:arg]) with a data section")
    parser.add_argument("--dataset", choices=("synthetic_heads", "voxceleb"))
    parser.add_argument("--data_dir")
    parser.add_argument("--name")
    parser.add_argument("--image_size", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num_workers", type=int)
    parser.add_argument("--num_batches", type=int, default=2)
    parser.add_argument("--out", default="grid.png", help="PNG of the first batch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    data = load_data_section(args)
    output_files.check_outputs({"--out": args.out}, [], overwrite=args.overwrite)
    iterator = make_train_iter(data)
    all_stats = []
    try:
        for i in range(args.num_batches):
            batch = next(iterator)
            if i == 0:
                with output_files.replacing(args.out) as tmp:
                    media.write_png(tmp, grid(batch))
            stats = batch_statistics(batch)
            all_stats.append(stats)
            print(f"batch {i}:")
            for key, value in stats.items():
                print(f"  {key}: {value}")
    finally:
        iterator.close()
    print(f"wrote {args.out} (rows: examples; columns: source | driving | cross driver)")
    return all_stats


if __name__ == "__main__":
    cli_errors.run(main)
