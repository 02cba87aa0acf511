"""insightface arcface_torch IResNet (`backbone.pth`) <-> nets/arcface.py `IResNet` variables.

The published backbones (recognition/arcface_torch model zoo, e.g. ms1mv3_arcface_r50_fp16,
glint360k_cosface_r100_fp16_0.1) are plain state dicts of `iresnet50` / `iresnet100`: `conv1`,
`bn1`, `prelu`, `layer{1..4}.{j}.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.0,downsample.1}`,
`bn2`, `fc`, `features`. A training checkpoint (`checkpoint_gpu_*.pt`) is accepted too: only
its `state_dict_backbone` is read. The architecture is read off the keys (blocks per layer:
[3, 4, 14, 3] is r50, [3, 13, 30, 3] r100), or forced with --arch; every key must fit.

Import:  python -m converters.arcface --checkpoint backbone.pth [--arch r50|r100] --out DIR
Export:  python -m converters.arcface --variables DIR --export backbone.pth
Probe:   python -m converters.arcface --checkpoint backbone.pth --probe images.npz \
             --probe-out embedding.npz

DIR holds {'params', 'batch_stats'} for `IResNet(stage_sizes=...).apply` (see
nets/arcface.py `embed`, which reads the architecture off the variables). The export loads into
arcface_torch's `get_model('r50')` with strict=True. The probe reads `images` [B, 112, 112, 3]
float32 RGB in [0, 1], aligned crops (nets/arcface.py `align_crop`), and writes `embedding`
[B, 512] float32 (raw, not normalised, as the backbone returns it).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from converters import cli, safe_load, torch_layout
from maskrenderer_jax import cli_errors
from maskrenderer_jax.nets.arcface import (
    ARCHS,
    INPUT_SIZE,
    IResNet,
    embed,
    stage_sizes_of,
)

TRAINING_KEY = "state_dict_backbone"  # arcface_torch train.py's checkpoint_gpu_{rank}.pt
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.")


def abstract_variables(stage_sizes) -> dict:
    """Shapes of IResNet's {'params', 'batch_stats'} (nothing is computed)."""
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    model = IResNet(stage_sizes=tuple(stage_sizes))
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def arch_name(stage_sizes) -> str:
    """'r50 [3, 4, 14, 3]' for a published architecture, else 'blocks [a, b, c, d]'."""
    names = [name for name, sizes in ARCHS.items() if sizes == tuple(stage_sizes)]
    return f"{names[0] if names else 'blocks'} {list(stage_sizes)}"


def stage_sizes_from_keys(keys, source: str = "checkpoint") -> tuple[int, ...]:
    """Blocks per layer of an IResNet state dict: the distinct `layer<i>.<j>.` indices."""
    blocks = {i: set() for i in range(1, 5)}
    for key in keys:
        if match := _BLOCK.match(key):
            blocks[int(match[1])].add(int(match[2]))
    sizes = tuple(len(blocks[i]) for i in range(1, 5))
    if 0 in sizes:
        hint = ""
        if any(str(k).startswith("module.") for k in keys):
            hint = " (keys start with 'module.': save `backbone.module.state_dict()`)"
        raise torch_layout.ConversionError(
            f"{source}: not an arcface_torch IResNet state dict: blocks per layer1..4 "
            f"{list(sizes)}{hint}; found {sorted(keys)[:8]}{' ...' if len(keys) > 8 else ''}"
        )
    return sizes


def import_state_dict(
    state_dict: object, arch: str | None = None, source: str = "checkpoint"
) -> dict:
    """An IResNet state dict (or training checkpoint) -> IResNet variables (numpy float32).

    arch: a key of ARCHS; None reads the blocks per layer off the keys. Raises ConversionError
    listing every missing, unexpected and mismatched key.
    """
    if isinstance(state_dict, dict) and TRAINING_KEY in state_dict:
        state_dict, source = state_dict[TRAINING_KEY], f"{source}[{TRAINING_KEY!r}]"
    if not isinstance(state_dict, dict):
        raise torch_layout.ConversionError(
            f"{source}: not an arcface_torch backbone state dict (a dict of tensors); found "
            f"{type(state_dict).__name__}"
        )
    state = safe_load.to_numpy(state_dict, source)
    found = stage_sizes_from_keys(state, source)
    stage_sizes = found if arch is None else ARCHS[arch]
    if stage_sizes != found:
        source = f"{source} (read as {arch_name(stage_sizes)}; its keys have {list(found)})"
    return torch_layout.from_torch(state, abstract_variables(stage_sizes), source=source)


def export_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """IResNet variables -> arcface_torch state dict (numpy), BN counters included."""
    return torch_layout.to_torch(variables)


def probe(variables: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """Aligned crops [B, 112, 112, 3] RGB in [0, 1] -> {'embedding': [B, 512] float32}."""
    return {"embedding": np.asarray(embed(variables, images), np.float32)}


def read_probe_inputs(path: str) -> np.ndarray:
    images = cli.read_images(path, hint=" aligned 112x112 crops")[0]
    if images.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(
            f"{path}: images must be [B, {INPUT_SIZE}, {INPUT_SIZE}, 3] aligned crops "
            f"(nets/arcface.py align_crop); got {images.shape}"
        )
    return images


def main(argv=None) -> None:
    parser = cli.network_parser(
        "python -m converters.arcface",
        __doc__,
        source=("--checkpoint", "arcface_torch backbone state dict (backbone.pth) to import"),
        export_help="write the arcface_torch state dict (torch) to this file",
        probe_help="npz with images [B, 112, 112, 3] RGB in [0, 1], aligned crops",
        probe_out_help="npz the probe writes embedding [B, 512] to",
    )
    parser.add_argument(
        "--arch", choices=sorted(ARCHS), help="default: read off the checkpoint's keys"
    )
    args = cli.parse(parser, argv)
    variables = cli.load_or_import(
        args,
        "checkpoint",
        lambda path: import_state_dict(safe_load.load_torch(path), args.arch, path),
    )
    stage_sizes = stage_sizes_of(variables)
    if args.arch and stage_sizes != ARCHS[args.arch]:
        parser.error(f"--arch {args.arch}: {args.variables} holds {arch_name(stage_sizes)}")
    print(f"IResNet {arch_name(stage_sizes)}")
    cli.write_outputs(
        args,
        variables,
        "IResNet",
        export=export_state_dict,
        probe=lambda v, path: probe(v, read_probe_inputs(path)),
    )


if __name__ == "__main__":
    cli_errors.run(main)
