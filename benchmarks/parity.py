"""Largest differences between our converted networks and the PyTorch references.

python -m benchmarks.parity [--write]

The PyTorch modules are the mirrors in tests/ (written from the published architectures with
the reference checkpoints' key names), with random weights; they go through our converters,
both run on the same inputs, and every probe output is compared. The tests hold these to
atol 1e-4; this table records the measured values.
"""

import argparse

import numpy as np
import torch

from benchmarks import report
from configs import fomm_vox256, tiny
from converters import deep3dface, fomm

# The torch mirrors live with the tests, not in the package.
from tests import resnet_torch, torch_utils
from tests.test_fomm_parity import images

SECTION = "## Parity with the PyTorch reference"


def fomm_rows(name: str, model_config, batch: int) -> list[tuple]:
    nets = torch_utils.random_fomm(model_config, seed=1)
    networks = fomm.import_checkpoint(torch_utils.checkpoint_of(nets), model_config)
    size = model_config.image_size
    source, driving = images(batch, size, 1), images(batch, size, 101)
    expected = torch_utils.torch_probe(nets, source, driving)
    got = fomm.probe(model_config, networks["model"], source, driving)
    return [
        (name, key, got[key].shape, float(np.max(np.abs(got[key] - expected[key])))) for key in got
    ]


def recon_rows(size: int) -> list[tuple]:
    net = resnet_torch.randomize_(resnet_torch.ReconNetWrapper(), seed=3)
    variables = deep3dface.import_checkpoint({"net_recon": net.state_dict()})
    x = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = deep3dface.probe(variables, x)["coeffs"]
    name = f"Deep3DFace ReconNet, {size}², batch 2"
    return [(name, "coeffs", got.shape, float(np.max(np.abs(got - expected))))]


def table(rows) -> str:
    lines = ["| network | output | shape | max abs diff |", "|---|---|---|---:|"]
    lines += [f"| {n} | `{k}` | {list(s)} | {d:.1e} |" for n, k, s, d in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    start_facts = report.facts()
    rows = fomm_rows("FOMM vox-256, batch 1", fomm_vox256.get_config().model, 1)
    rows += fomm_rows("FOMM tiny (64², K=4), batch 2", tiny.get_config("fomm").model, 2)
    rows += recon_rows(224)
    worst = max(d for *_, d in rows)
    intro = (
        "Random weights, float32, CPU; torch's `grid_sample` with `align_corners=True` as FOMM "
        f"was trained (docs/DESIGN_NOTES.md). Worst difference: {worst:.1e} (tests: 1e-4)."
    )
    report.publish(SECTION, intro, table(rows), start_facts, args.write)


if __name__ == "__main__":
    main()
