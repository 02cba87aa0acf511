"""python -m benchmarks.evaluation [--demo-workdir workdirs/demo] [--write]

How fast the evaluation runs on this machine: each backend's throughput on 256x256 face frames
(synthetic heads rendered at 256 px), InceptionV3 features/s (FID), and the whole self-
reenactment protocol (tiny model, 64 px synthetic_heads) with and without the face tools. With
--demo-workdir, also the demo run's self and cross rows beside the copy_source and
copy_driving baselines (dlib landmarks and identity, CNN detector).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import report
from configs.common import load_config
from data_pipeline import synthetic_heads
from maskrenderer_jax.evaluation import backends, head_pose
from maskrenderer_jax.evaluation import report as eval_report
from maskrenderer_jax.evaluation.protocol import Evaluator
from maskrenderer_jax.face3d import synthetic_bfm
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.nets import inception, lpips
from maskrenderer_jax.train.checkpoint import load_generator_variables, read_run_config
from maskrenderer_jax.train.sharding import make_mesh

SECTION = "## Evaluation"
FRAMES = 16


def faces_256(count: int = FRAMES) -> np.ndarray:
    """[count, 256, 256, 3] float32 synthetic heads (two identities, moving)."""
    model = synthetic_bfm.synthetic_bfm(0)
    frames = []
    for identity in range(2):
        rng = np.random.default_rng([0, identity])
        coeffs = synthetic_heads.clip_coefficients(
            synthetic_heads.identity_coefficients(rng), rng, count // 2
        )
        background = synthetic_heads.background(rng, 256)
        frames.append(synthetic_heads.composite_frames(model, coeffs, background, 256))
    return np.concatenate([np.asarray(f) for f in frames]).astype(np.float32) / 255.0


def per_second(fn, items: int, repeats: int = 2) -> float:
    fn()  # compile / load
    elapsed = 0.0
    for _ in range(repeats):
        backends.forget_faces()  # time the detections, not the per-image memo
        start = time.perf_counter()
        jax.block_until_ready(fn())
        elapsed += time.perf_counter() - start
    return items * repeats / elapsed


def backend_rows(frames: np.ndarray) -> list[tuple[str, str]]:
    rows = []
    n = len(frames)
    for detector in ("hog", "cnn"):
        found = np.isfinite(backends.dlib_landmarks(detector, frames)[:, 0, 0]).mean()
        rate = per_second(lambda d=detector: backends.dlib_landmarks(d, frames), n)
        rows.append((f"dlib {detector.upper()} detection + 68 landmarks", f"{rate:.1f} "
                     f"frames/s (faces found in {found:.0%} of the synthetic frames)"))  # fmt: skip
    rate = per_second(lambda: backends.dlib_identity("hog", frames), n)
    rows.append(("dlib HOG detection + 128-D identity", f"{rate:.1f} frames/s"))
    model = synthetic_bfm.synthetic_bfm(0)
    points = np.nan_to_num(backends.dlib_landmarks("cnn", frames), nan=128.0)
    rate = per_second(lambda: head_pose.fit_head_pose(model, points, 256), n)
    rows.append(("3DMM pose fit to 68 landmarks (--pose landmarks)", f"{rate:.1f} frames/s"))
    x = jnp.asarray(frames)
    for net in ("alex", "vgg"):
        variables = backends.build(load_config("configs/tiny.py"), landmarks="none",
                                   identity="none", lpips_net=net).lpips  # fmt: skip
        rate = per_second(lambda v=variables, k=net: lpips.distance(v, x, x[::-1], k), n)
        rows.append((f"LPIPS {net} (real weights), pairs at 256²", f"{rate:.1f} pairs/s"))
    variables = inception.init_random(jax.random.key(0))
    rate = per_second(lambda: inception.features(variables, x), n)
    rows.append(("InceptionV3 pool3 (FID), 256² resized to 299²", f"{rate:.1f} images/s"))
    return rows


def protocol_rows() -> list[tuple[str, str]]:
    config = load_config("configs/tiny.py")
    mesh = make_mesh(config.mesh)
    variables = mr.init_variables(config.model, jax.random.key(0))
    rows = []
    for label, kwargs in (
        ("pixels + LPIPS", dict(landmarks="none", identity="none")),
        ("+ dlib landmarks (CNN), pose fit, identity", dict(detector="cnn")),
    ):
        chosen = backends.build(config, **kwargs)
        evaluator = Evaluator(config, "self", chosen, mesh=mesh,
                              face_model=backends.face_model(config), limit=4 * FRAMES)  # fmt: skip
        evaluator.run(variables)  # compile
        backends.forget_faces()
        result = evaluator.run(variables)
        rows.append((f"self-reenactment protocol, tiny model 64², {label}",
                     f"{result['frames_per_second']:.1f} frames/s"))  # fmt: skip
    return rows


def demo_rows(workdir: str, limit: int) -> str:
    config = read_run_config(workdir)
    variables = load_generator_variables(workdir, config)
    mesh = make_mesh(config.mesh)
    face_model = backends.face_model(config)
    tables = []
    for protocol in ("self", "cross"):
        chosen = backends.build(config, detector="cnn", protocol=protocol)
        rows = []
        for baseline in (None, "copy_source", "copy_driving"):
            backends.forget_faces()
            evaluator = Evaluator(config, protocol, chosen, mesh=mesh, face_model=face_model,
                                  baseline=baseline, limit=limit)  # fmt: skip
            result = evaluator.run(None if baseline else variables)
            rows.append((baseline or "demo", result))
        tables.append(f"{protocol}-reenactment, the first {rows[0][1]['frames']} held-out "
                      "frames:\n\n"
                      + eval_report.markdown_table(rows, protocol))  # fmt: skip
        tables.append(f"backends: {rows[0][1]['backends']}; ground truth (driving frames vs "
                      f"the rendered truth): {rows[0][1]['ground_truth']}")  # fmt: skip
    return "\n\n".join(tables)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evaluation", description=__doc__)
    parser.add_argument("--demo-workdir", help="also evaluate this demo run beside baselines")
    parser.add_argument("--limit", type=int, default=0, help="demo rows: first N frames (0: all)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    facts = report.facts()
    rows = backend_rows(faces_256()) + protocol_rows()
    table = "| what | throughput |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    if args.demo_workdir:
        table += "\n\n" + demo_rows(args.demo_workdir, args.limit)
    intro = (
        "Evaluation throughput on this CPU: each backend on 256x256 synthetic face frames "
        "(host-side dlib runs one frame at a time), and the self-reenactment protocol "
        "end to end (data, model, metrics) at 64 px. The InceptionV3 row uses random weights "
        "(the same cost as converted ones). Each timing starts with no remembered detections "
        "(the evaluation detects each distinct image once). The demo rows evaluate the run "
        "in --demo-workdir (`make demo`'s config) on every held-out frame."
    )
    report.publish(SECTION, intro, table, facts, args.write)


if __name__ == "__main__":
    main()
