"""FOMM converter: exact round trips, strict mismatch reports, untrusted files, the CLI."""

import os
import pickle
import re

import numpy as np
import pytest
import torch

from configs import tiny
from converters import fomm, safe_load, torch_layout
from tests import torch_utils
from tests.test_fomm_parity import images

TINY = "configs/tiny.py:fomm"


@pytest.fixture(scope="module")
def tiny_fomm():
    model_config = tiny.get_config("fomm").model
    nets = torch_utils.random_fomm(model_config, seed=5)
    return model_config, nets, torch_utils.checkpoint_of(nets)


def test_round_trip_is_exact(tiny_fomm):
    model_config, nets, checkpoint = tiny_fomm
    networks = fomm.import_checkpoint(checkpoint, model_config)
    exported = fomm.export_checkpoint(networks, model_config)
    derived = fomm.derived_buffers(model_config)
    for name in ("kp_detector", "generator", "discriminator"):
        original = checkpoint[name]
        assert set(exported[name]) == set(original), name
        for key, value in original.items():
            if key.endswith("num_batches_tracked"):
                continue  # a counter FOMM never reads (fixed momentum); exported as 0
            if key in derived.get(name, {}):
                # The anti-alias kernel is regenerated, not stored: equal to float32 rounding.
                np.testing.assert_allclose(exported[name][key], value.numpy(), atol=1e-8)
                continue
            np.testing.assert_array_equal(exported[name][key], value.numpy(), err_msg=key)
    again = fomm.import_checkpoint(exported, model_config)
    assert_trees_equal(networks["model"], again["model"])
    assert_trees_equal(networks["discriminator"], again["discriminator"])


def assert_trees_equal(a, b):
    flat_a = dict(torch_layout._flatten(a))
    flat_b = dict(torch_layout._flatten(b))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=str(key))


def test_checkpoint_without_discriminator_converts(tiny_fomm):
    model_config, _, checkpoint = tiny_fomm
    networks = fomm.import_checkpoint(
        {k: v for k, v in checkpoint.items() if k != "discriminator"}, model_config
    )
    assert networks["discriminator"] is None
    assert set(networks["model"]["params"]) == {"kp_detector", "generator"}


def test_other_num_kp_lists_every_mismatch(tiny_fomm):
    model_config, _, _ = tiny_fomm
    other = model_config.copy_and_resolve_references()
    with other.unlocked():
        other.num_kp = 15
    checkpoint = torch_utils.checkpoint_of(torch_utils.random_fomm(other, seed=1))
    with pytest.raises(torch_layout.ConversionError) as info:
        fomm.import_checkpoint(checkpoint, model_config, source="kp15.pth.tar")
    message = str(info.value)
    assert "kp15.pth.tar['kp_detector'] does not fit" in message
    assert "kp15.pth.tar['generator'] does not fit" in message
    # Every mismatched key is listed, with both shapes.
    for key in (
        "kp.weight",
        "kp.bias",
        "jacobian.weight",
        "jacobian.bias",
        "dense_motion_network.mask.weight",
        "dense_motion_network.mask.bias",
        "dense_motion_network.hourglass.encoder.down_blocks.0.conv.weight",
    ):
        assert f"    {key}: checkpoint" in message, key
    assert re.search(r"kp.weight: checkpoint \(15, 11, 7, 7\), model \(4, 11, 7, 7\)", message)


def test_other_architecture_lists_missing_and_unexpected(tiny_fomm):
    model_config, _, checkpoint = tiny_fomm
    other = model_config.copy_and_resolve_references()
    with other.unlocked():
        other.generator.num_down_blocks = 3  # e.g. a TPSMM-like 3-level generator
    bigger = torch_utils.checkpoint_of(torch_utils.random_fomm(other, seed=2))
    with pytest.raises(torch_layout.ConversionError) as info:
        fomm.import_checkpoint({**checkpoint, "generator": bigger["generator"]}, model_config)
    message = str(info.value)
    assert "unexpected:" in message and "down_blocks.2.conv.weight" in message
    assert "up_blocks.2.conv.weight" in message
    assert "kp_detector" not in message  # the kp detector fits; only the generator is reported


def test_fixed_buffer_of_another_scale_is_reported(tiny_fomm):
    model_config, _, checkpoint = tiny_fomm
    kp = dict(checkpoint["kp_detector"])
    kp["down.weight"] = kp["down.weight"] * 2
    with pytest.raises(torch_layout.ConversionError, match="down.weight: fixed buffer differs"):
        fomm.import_checkpoint({**checkpoint, "kp_detector": kp}, model_config)


@pytest.mark.parametrize(
    "bad, found",
    [
        ({"state_dict": {}}, "found ['state_dict']"),
        ([1, 2], "found list"),
        ({"generator": {}, "epoch": 1}, "found ['epoch', 'generator']"),
    ],
)
def test_not_a_fomm_checkpoint_names_what_was_found(tiny_fomm, bad, found):
    with pytest.raises(torch_layout.ConversionError, match="not a FOMM checkpoint") as info:
        fomm.import_checkpoint(bad, tiny_fomm[0], source="x.pth")
    assert found in str(info.value)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_booby_trapped_files_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch_file = tmp_path / "evil.pth.tar"
    torch.save({"generator": _Exploit(marker)}, torch_file)
    with pytest.raises(safe_load.UntrustedFileError, match="evil.pth.tar"):
        safe_load.load_torch(torch_file)
    pickle_file = tmp_path / "evil.pkl"
    pickle_file.write_bytes(pickle.dumps({"conv1.weight": _Exploit(marker)}))
    with pytest.raises(safe_load.UntrustedFileError, match="refusing to load global"):
        safe_load.load_pickle(pickle_file)
    assert not marker.exists()
    # Plain numpy pickles (VGGFace2's format) load.
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"conv1.weight": np.ones((2, 3), np.float32)}, protocol=2))
    np.testing.assert_array_equal(safe_load.load_pickle(good)["conv1.weight"], np.ones((2, 3)))


def test_truncated_checkpoint_names_the_file(tmp_path, tiny_fomm):
    path = tmp_path / "cut.pth.tar"
    torch.save(tiny_fomm[2], path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(safe_load.UntrustedFileError, match="cut.pth.tar"):
        safe_load.load_torch(path)


def test_cli_import_probe_export(tmp_path, tiny_fomm, capsys):
    model_config, nets, checkpoint = tiny_fomm
    ckpt = tmp_path / "fomm.pth.tar"
    torch.save(checkpoint, ckpt)
    source, driving = images(2, 64, 11), images(2, 64, 12)
    np.savez(tmp_path / "inputs.npz", source=source, driving=driving)
    fomm.main(
        [
            "--checkpoint",
            str(ckpt),
            "--config",
            TINY,
            "--out",
            str(tmp_path / "vars"),
            "--probe",
            str(tmp_path / "inputs.npz"),
            "--probe-out",
            str(tmp_path / "o.npz"),
        ]
    )
    assert "occlusion_map (2, 16, 16, 1)" in capsys.readouterr().out
    expected = torch_utils.torch_probe(nets, source, driving)
    with np.load(tmp_path / "o.npz") as got:
        assert set(got.files) == {
            "kp_source_value",
            "kp_source_jacobian",
            "kp_driving_value",
            "kp_driving_jacobian",
            "deformation",
            "occlusion_map",
            "prediction",
        }
        for key in got.files:
            np.testing.assert_allclose(got[key], expected[key], atol=1e-4, err_msg=key)

    # Export from the saved Flax variables loads strictly into the PyTorch modules.
    out = tmp_path / "exported.pth.tar"
    fomm.main(["--variables", str(tmp_path / "vars"), "--config", TINY, "--export", str(out)])
    exported = torch.load(out, weights_only=True)
    fresh = torch_utils.random_fomm(model_config, seed=99)
    for net, name in zip(fresh, ("kp_detector", "generator", "discriminator"), strict=True):
        net.load_state_dict(exported[name], strict=True)
        for key, value in checkpoint[name].items():
            if not key.endswith(("num_batches_tracked", "down.weight")):
                torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)


def test_cli_rejects_bad_probe_inputs(tmp_path, tiny_fomm):
    torch.save(tiny_fomm[2], tmp_path / "c.pth")
    np.savez(
        tmp_path / "in.npz",
        source=np.zeros((64, 64, 3), np.float32),
        driving=np.zeros((1, 64, 64, 3), np.float32),
    )
    with pytest.raises(ValueError, match=r"source must be \[B, H, W, 3\].*\(64, 64, 3\)"):
        fomm.main(
            [
                "--checkpoint",
                str(tmp_path / "c.pth"),
                "--config",
                TINY,
                "--probe",
                str(tmp_path / "in.npz"),
                "--probe-out",
                str(tmp_path / "o.npz"),
            ]
        )
