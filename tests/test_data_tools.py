"""The data_pipeline command lines and config section: inspect (statistics and grid), the
`python -m` entry points, data_config."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline import build, fake_data
from data_pipeline import inspect as data_inspect
from data_pipeline.config import data_config

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    layout = fake_data.write_fomm_layout(root / "raw", size=SIZE)
    build.build("voxceleb", root / "tfds", manual_dir=layout, image_size=SIZE, num_workers=0)
    return root / "tfds"


def test_inspect_prints_statistics_and_writes_the_grid(data_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    stats = data_inspect.main(["--dataset", "voxceleb", "--data_dir", str(data_dir),
                               "--image_size", str(SIZE), "--batch_size", "4",
                               "--num_batches", "3", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert len(stats) == 3 and "batch 2:" in printed and "cross == source identity: 0%" in printed
    grid = np.asarray(Image.open(out))
    assert grid.shape == (4 * SIZE, 3 * SIZE, 3)  # rows: examples; source | driving | cross
    again = ["--dataset", "voxceleb", "--data_dir", str(data_dir), "--image_size", str(SIZE),
             "--num_batches", "1", "--out", str(out)]  # fmt: skip
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        data_inspect.main(again)
    data_inspect.main([*again, "--overwrite"])


def test_inspect_reads_the_data_section_of_a_config_file(data_dir, tmp_path, capsys):
    config_file = tmp_path / "with_data.py"
    config_file.write_text(
        "import ml_collections\n"
        "from data_pipeline.config import data_config\n\n\n"
        "def get_config(arg=None):\n"
        "    config = ml_collections.ConfigDict()\n"
        f"    config.data = data_config(dataset='voxceleb', data_dir={str(data_dir)!r}, "
        f"image_size={SIZE}, batch_size=2)\n"
        "    return config\n"
    )
    data_inspect.main(
        ["--config", str(config_file), "--num_batches", "1", "--out", str(tmp_path / "g.png")]
    )
    assert Image.open(tmp_path / "g.png").size == (3 * SIZE, 2 * SIZE)
    without = tmp_path / "without_data.py"
    without.write_text(
        "import ml_collections\n\n\ndef get_config(arg=None):\n"
        "    return ml_collections.ConfigDict({'model': {}})\n"
    )
    with pytest.raises(SystemExit, match="no `data` section"):
        data_inspect.main(["--config", str(without)])


# runpy warns that the module is already imported (by this file): harmless here.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", ["build", "preprocess", "inspect"])
def test_module_entry_points_run(module, monkeypatch, capsys):
    # As `python -m data_pipeline.<module> --help`, in this process (no second interpreter).
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"data_pipeline.{module}", run_name="__main__")
    assert exit_info.value.code == 0
    assert f"python -m data_pipeline.{module}" in capsys.readouterr().out


def test_data_config_overrides_and_rejects_unknown_keys():
    config = data_config(image_size=128, augmentation=dict(jitter=0.0), eval=dict(batch_size=4))
    assert config.image_size == 128 and config.augmentation.flip and config.augmentation.jitter == 0
    assert config.eval.batch_size == 4 and config.synthetic.image_size == 64
    assert config.name is None
    config.name = "vox_jpeg"  # a placeholder: typed str, settable later
    with pytest.raises(KeyError, match="unknown data config key 'batch'"):
        data_config(batch=8)
