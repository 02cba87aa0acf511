"""Evaluation results as files a person reads: JSON (written atomically), a Markdown table in
the layout of the paper's Tables 1 (cross) and 2 (self) plus the second seed's columns, and
TensorBoard scalars in the run."""

import json
import math
import os
from pathlib import Path

from maskrenderer_jax.evaluation.protocol import HIGHER_IS_BETTER, TABLE_COLUMNS

HEADINGS = {
    "akd": "AKD", "aid": "AID", "l1": "L1", "epd": "EPD", "ssim": "SSIM", "psnr": "PSNR",
    "masked_ssim": "SSIM (face)", "masked_psnr": "PSNR (face)", "lpips": "LPIPS",
    "csim": "CSIM", "nme": "NME", "prmse": "PRMSE (°)", "isim": "ISIM", "ksim": "KSIM",
    "psim": "PSIM", "fid": "FID", "macs": "GMACs/frame",
}  # fmt: skip


def format_value(value: float, column: str = "") -> str:
    """4 decimals (2 from 100 up); MACs in G; PSNR of identical images is stated as ∞."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if column == "macs":
        return f"{value / 1e9:.2f}"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def markdown_table(rows: list[tuple[str, dict]], protocol: str) -> str:
    """Rows of (label, result) -> a Markdown table of the protocol's columns that any row
    has, arrows saying which direction is better."""
    columns = [c for c in TABLE_COLUMNS[protocol] if any(c in r["metrics"] for _, r in rows)]
    head = [f"{HEADINGS[c]} {'↑' if c in HIGHER_IS_BETTER else '↓'}" for c in columns]
    lines = ["| " + " | ".join(["", "frames", *head]) + " |"]
    lines.append("|" + "---|" * (len(columns) + 2))
    for label, result in rows:
        cells = [format_value(result["metrics"].get(c), c) for c in columns]
        lines.append("| " + " | ".join([label, str(result["frames"]), *cells]) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, result: dict) -> Path:
    """Writes `result` beside `path` and renames it into place, so an interrupted run never
    leaves a complete-looking file. Infinite PSNR is written as JSON's `Infinity` (Python's
    json reads it back as inf)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)
    return path


def tensorboard_scalars(result: dict) -> dict[str, float]:
    """{'eval_self/l1': ..., 'eval_self/akd_driving_vs_truth': ...}; infinities left out
    (TensorBoard cannot plot them)."""
    prefix = f"eval_{result['protocol']}"
    values = {**result["metrics"], **result.get("ground_truth", {})}
    return {f"{prefix}/{k}": float(v) for k, v in values.items() if math.isfinite(v)}


def write_tensorboard(workdir: str | Path, step: int, result: dict) -> None:
    """The result's scalars into the run's TensorBoard folder at `step`."""
    import tensorboardX

    with tensorboardX.SummaryWriter(str(Path(workdir) / "tensorboard")) as writer:
        for tag, value in tensorboard_scalars(result).items():
            writer.add_scalar(tag, value, step)
