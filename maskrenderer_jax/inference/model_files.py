"""What the animate command animates with: a training workdir (its config.json and a
checkpoint), a directory of converted variables, or a FOMM .pth.tar converted in memory. A
checkpoint of another configuration than the one asked for is one error listing every
difference."""

import argparse
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections

from maskrenderer_jax import params_io
from maskrenderer_jax.cli_errors import UserError
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.train import checkpoint


def _config(args: argparse.Namespace, what: str) -> ml_collections.ConfigDict:
    if not args.config:
        raise UserError(f"--checkpoint {args.checkpoint} is {what}: pass --config (the model "
                        "config it was made with, e.g. configs/fomm_vox256.py)")  # fmt: skip
    from configs.common import load_config

    return load_config(args.config)


def _check_shapes(variables: dict, model_config, source: str) -> None:
    """UserError listing every leaf of `variables` missing, unexpected or misshapen against the
    model `model_config` builds."""
    want = jax.eval_shape(lambda: mr.init_variables(model_config, jax.random.key(0)))
    flat_want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(want)}
    flat_got = {
        jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(variables)
    }
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in flat_want.items() if k not in flat_got]
    problems += [f"unexpected {k}" for k in flat_got if k not in flat_want]
    problems += [
        f"{k}: shape {tuple(flat_got[k].shape)} in the checkpoint, {tuple(v.shape)} in the config"
        for k, v in flat_want.items()
        if k in flat_got and tuple(flat_got[k].shape) != tuple(v.shape)
    ]
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise UserError(f"{source} holds another model than the config ({len(problems)} "
                        f"mismatches):\n  {shown}")  # fmt: skip


class LoadedModel(NamedTuple):
    config: ml_collections.ConfigDict
    variables: dict  # the generator side's {'params', 'batch_stats'}
    described: str  # what was loaded, for logs and results
    step: int | None  # the checkpoint's step (a training workdir), else None


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model of `args.checkpoint` (workdir, variables directory or FOMM .pth.tar), with
    `args.config` (required but for a workdir, where it must match), `args.step` (workdir) and
    `args.precision` (optional)."""
    path = Path(args.checkpoint)
    if not path.exists():
        raise UserError(f"--checkpoint {path}: no such file or folder")
    if path.is_file():
        from converters import fomm, safe_load

        config = _config(args, "a FOMM checkpoint")
        variables = fomm.import_checkpoint(
            safe_load.load_torch(path), config.model, source=str(path)
        )["model"]
        described, step = f"FOMM checkpoint {path}", None
    elif (path / checkpoint.CONFIG_FILE).is_file():
        saved = checkpoint.read_run_config(path)
        config = saved
        if args.config:
            from configs.common import load_config

            config = load_config(args.config)
            differences = checkpoint.model_differences(saved, config)
            if differences:
                raise UserError(
                    f"--checkpoint {path} was trained with another model than --config "
                    f"{args.config} ({len(differences)} differences):\n  "
                    + "\n  ".join(differences)
                )
        steps = checkpoint.saved_steps(path)
        if not steps:
            raise UserError(f"{checkpoint.checkpoint_dir(path)}: no checkpoint")
        step = steps[-1] if args.step is None else args.step
        if step not in steps:
            raise UserError(f"{path}: no checkpoint at step {step}; saved steps {steps}")
        variables = checkpoint.load_generator_variables(path, config, step)
        described = f"{path} step {step}"
    else:
        config = _config(args, "a directory of variables")
        variables = params_io.load_variables(path)
        if "model" in variables and "params" not in variables:  # converters.fomm --out
            variables = variables["model"]
        variables = {k: variables.get(k, {}) for k in ("params", "batch_stats")}
        _check_shapes(variables, config.model, f"--checkpoint {path}")
        described, step = f"variables {path}", None
    if getattr(args, "precision", "float32") != "float32":
        config.model.dtype = args.precision
    return LoadedModel(config, variables, described, step)
