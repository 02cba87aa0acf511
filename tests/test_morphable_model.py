"""The 3DMM against a PyTorch mirror of Deep3DFace's ParametricFaceModel (written here from
models/bfm.py of sicxu/Deep3DFaceRecon_pytorch), the .mat loader's errors, the synthetic
model's geometry and the converter CLI."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io as sio
import torch
import torch.nn.functional as F

from converters import bfm as bfm_cli
from maskrenderer_jax.face3d import bfm_files
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import synthetic_bfm as sb

ATOL = 1e-4
# Jitted once per shape: op-by-op eager dispatch of the whole pipeline is slow on CPU.
reconstruct = jax.jit(mm.reconstruct, static_argnames="image_size")
ROOT = Path(__file__).resolve().parents[1]


class TorchFaceModel:
    """Deep3DFace's ParametricFaceModel (recenter=True, is_train=True), straight from the
    loadmat dict; compute_for_render returns (vertex, texture, color, landmark)."""

    def __init__(self, mat: dict, focal=1015.0, center=112.0, camera_distance=10.0):
        def t(name, dtype=torch.float32):
            return torch.from_numpy(np.asarray(mat[name]).astype(np.float64)).to(dtype)

        shape = mat["meanshape"].astype(np.float32).reshape(-1, 3)
        self.mean_shape = torch.from_numpy(shape - np.mean(shape, axis=0, keepdims=True))
        self.mean_shape = self.mean_shape.reshape(-1, 1)
        self.id_base, self.exp_base = t("idBase"), t("exBase")
        self.tex_base, self.mean_tex = t("texBase"), t("meantex")
        self.point_buf = t("point_buf", torch.int64) - 1
        self.face_buf = t("tri", torch.int64) - 1
        self.keypoints = t("keypoints", torch.int64).reshape(-1) - 1
        self.persc_proj = torch.tensor(
            [[focal, 0, center], [0, focal, center], [0, 0, 1]], dtype=torch.float32
        ).T
        self.camera_distance = camera_distance
        self.init_lit = torch.tensor([0.8] + [0.0] * 8).reshape(1, 1, 9)
        self.a = [np.pi, 2 * np.pi / np.sqrt(3.0), 2 * np.pi / np.sqrt(8.0)]
        self.c = [
            1 / np.sqrt(4 * np.pi),
            np.sqrt(3.0) / np.sqrt(4 * np.pi),
            3 * np.sqrt(5.0) / np.sqrt(12 * np.pi),
        ]

    def compute_shape(self, id_coeff, exp_coeff):
        shape = (
            torch.einsum("ij,aj->ai", self.id_base, id_coeff)
            + torch.einsum("ij,aj->ai", self.exp_base, exp_coeff)
            + self.mean_shape.reshape(1, -1)
        )
        return shape.reshape(id_coeff.shape[0], -1, 3)

    def compute_texture(self, tex_coeff):
        tex = torch.einsum("ij,aj->ai", self.tex_base, tex_coeff) + self.mean_tex
        return (tex / 255.0).reshape(tex_coeff.shape[0], -1, 3)

    def compute_norm(self, shape):
        v1, v2, v3 = (shape[:, self.face_buf[:, k]] for k in range(3))
        face_norm = F.normalize(torch.cross(v1 - v2, v2 - v3, dim=-1), dim=-1, p=2)
        face_norm = torch.cat([face_norm, torch.zeros(face_norm.shape[0], 1, 3)], dim=1)
        return F.normalize(torch.sum(face_norm[:, self.point_buf], dim=2), dim=-1, p=2)

    def compute_color(self, texture, norm, gamma):
        a, c = self.a, self.c
        gamma = (gamma.reshape(gamma.shape[0], 3, 9) + self.init_lit).permute(0, 2, 1)
        x, y, z = norm[..., :1], norm[..., 1:2], norm[..., 2:]
        basis = torch.cat(
            [
                a[0] * c[0] * torch.ones_like(x),
                -a[1] * c[1] * y,
                a[1] * c[1] * z,
                -a[1] * c[1] * x,
                a[2] * c[2] * x * y,
                -a[2] * c[2] * y * z,
                0.5 * a[2] * c[2] / np.sqrt(3.0) * (3 * z**2 - 1),
                -a[2] * c[2] * x * z,
                0.5 * a[2] * c[2] * (x**2 - y**2),
            ],
            dim=-1,
        )
        rgb = [basis @ gamma[..., k : k + 1] for k in range(3)]
        return torch.cat(rgb, dim=-1) * texture

    def compute_rotation(self, angles):
        b = angles.shape[0]
        one, zero = torch.ones(b, 1), torch.zeros(b, 1)
        x, y, z = angles[:, :1], angles[:, 1:2], angles[:, 2:]
        cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
        rx = torch.cat([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).reshape(b, 3, 3)
        ry = torch.cat([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).reshape(b, 3, 3)
        rz = torch.cat([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).reshape(b, 3, 3)
        return (rz @ ry @ rx).permute(0, 2, 1)

    def compute_for_render(self, coeffs):
        ids, exp, tex = coeffs[:, :80], coeffs[:, 80:144], coeffs[:, 144:224]
        angles, gammas, trans = coeffs[:, 224:227], coeffs[:, 227:254], coeffs[:, 254:]
        shape = self.compute_shape(ids, exp)
        rot = self.compute_rotation(angles)
        vertex = shape @ rot + trans.unsqueeze(1)
        vertex[..., -1] = self.camera_distance - vertex[..., -1]  # to_camera, in place
        proj = vertex @ self.persc_proj
        proj = proj[..., :2] / proj[..., 2:]
        texture = self.compute_texture(tex)
        color = self.compute_color(texture, self.compute_norm(shape) @ rot, gammas)
        return vertex, texture, color, proj[:, self.keypoints], proj


def random_coeffs(batch: int, seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coeffs = rng.normal(0, scale, (batch, 257)).astype(np.float32)
    coeffs[:, 224:227] = rng.uniform(-np.pi, np.pi, (batch, 3))  # large angles, all axes
    coeffs[:, 227:254] *= 0.3
    coeffs[:, 254:257] = rng.uniform(-0.5, 0.5, (batch, 3))
    return coeffs


@pytest.fixture(scope="module")
def small_mat(tmp_path_factory) -> Path:
    """A few-hundred-vertex .mat of the real schema with fully random bases and textures."""
    rng = np.random.default_rng(3)
    model = sb.synthetic_bfm(seed=1, grid=(16, 20))
    n3 = 3 * model.num_vertices
    model = model.replace(
        id_base=jnp.asarray(rng.normal(0, 0.02, (n3, 80)), jnp.float32),
        exp_base=jnp.asarray(rng.normal(0, 0.02, (n3, 64)), jnp.float32),
        tex_base=jnp.asarray(rng.normal(0, 5.0, (n3, 80)), jnp.float32),
        mean_tex=jnp.asarray(rng.uniform(0, 255, n3), jnp.float32),
        # Not centred, so the loader's recentring is exercised.
        mean_shape=model.mean_shape + jnp.asarray([0.1, -0.2, 0.3]),
    )
    return bfm_files.write_bfm_mat(model, tmp_path_factory.mktemp("bfm") / "small.mat")


@pytest.fixture(scope="module")
def synthetic():
    return sb.synthetic_bfm(seed=0)


def test_reconstruct_matches_deep3dface_torch(small_mat):
    model = bfm_files.load_bfm_mat(small_mat)
    assert model.num_vertices == 320
    reference = TorchFaceModel(sio.loadmat(small_mat))
    coeffs = random_coeffs(4, seed=0)
    vertex, texture, color, lms, proj = (
        t.numpy() for t in reference.compute_for_render(torch.from_numpy(coeffs))
    )
    out = reconstruct(model, coeffs)
    for name, want in [
        ("vertices", vertex),
        ("texture", texture),
        ("colors", color),
        ("landmarks", lms),
        ("projected", proj),
    ]:
        np.testing.assert_allclose(out[name], want, atol=ATOL, rtol=1e-6, err_msg=name)
    # The probe is meaningful only if lighting and pose really vary.
    assert np.std(color) > 0.05 and np.std(lms) > 10
    # The un-posed normals are Deep3DFace's.
    shape = reference.compute_shape(
        *(torch.from_numpy(coeffs[:, s]) for s in (slice(0, 80), slice(80, 144)))
    )
    np.testing.assert_allclose(
        mm.vertex_normals(model, jnp.asarray(shape.numpy())),
        reference.compute_norm(shape),
        atol=1e-5,
    )


def test_rotation_is_rz_ry_rx_and_transform_uses_its_transpose():
    angles = jnp.asarray([[0.3, -1.2, 2.5], [np.pi, 0.0, -np.pi / 2]], jnp.float32)
    rot = mm.rotation_matrix(angles)
    reference = TorchFaceModel.compute_rotation(None, torch.from_numpy(np.array(angles)))
    np.testing.assert_allclose(rot, reference.permute(0, 2, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(
        rot @ jnp.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-6
    )
    # A quarter turn about z maps x to y (column-vector R).
    quarter = mm.rotation_matrix(jnp.asarray([[0.0, 0.0, np.pi / 2]]))
    moved = mm.transform(jnp.asarray([[[1.0, 0.0, 0.0]]]), quarter, jnp.zeros((1, 3)))
    np.testing.assert_allclose(moved, [[[0.0, 1.0, 0.0]]], atol=1e-6)


def test_camera_for_size_scales_projection(synthetic):
    coeffs = random_coeffs(2, seed=1, scale=0.5)
    coeffs[:, 224:227] *= 0.1
    small = reconstruct(synthetic, coeffs)["landmarks"]
    large = reconstruct(synthetic, coeffs, image_size=448)["landmarks"]
    np.testing.assert_allclose(large, 2 * np.asarray(small), atol=1e-3)
    assert mm.camera_for_size(256) == (1160.0, 128.0)


def test_gradients_are_finite(small_mat):
    model = bfm_files.load_bfm_mat(small_mat)
    # A degenerate (zero-area) triangle must not turn the normals' gradient into NaN.
    tri = np.asarray(model.triangles).copy()
    tri[0] = [tri[0, 0]] * 3
    model = model.replace(triangles=jnp.asarray(tri))

    def loss(c):
        out = mm.reconstruct(model, c)
        return jnp.mean(out["colors"]) + jnp.mean(out["landmarks"]) * 1e-3

    grad = jax.jit(jax.grad(loss))(jnp.asarray(random_coeffs(2, seed=2)))
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_nan_coefficients_raise_naming_groups(synthetic):
    coeffs = np.zeros((3, 257), np.float32)
    coeffs[1, 90] = np.nan  # exp
    coeffs[2, 255] = np.inf  # trans
    with pytest.raises(ValueError, match=r"exp \[80:144\] in batch rows \[1\].*trans"):
        mm.reconstruct(synthetic, coeffs)
    with pytest.raises(ValueError, match="non-finite"):
        bfm_cli.probe(synthetic, coeffs)
    with pytest.raises(ValueError, match=r"\[B, 257\]"):
        mm.check_coefficients(np.zeros((2, 256)))


def test_loader_names_file_field_and_shapes(small_mat, tmp_path):
    mat = sio.loadmat(small_mat)
    fields = {k: v for k, v in mat.items() if not k.startswith("__")}
    del fields["exBase"]
    fields["texBase"] = fields["texBase"][:, :79]
    fields["point_buf"] = fields["point_buf"][:-1]
    fields["keypoints"] = fields["keypoints"] + 10_000
    bad = tmp_path / "broken_bfm.mat"
    sio.savemat(bad, fields)
    with pytest.raises(ValueError) as err:
        bfm_files.load_bfm_mat(bad)
    message = str(err.value)
    assert str(bad) in message and "4 problem(s)" in message
    assert "missing field 'exBase'" in message
    assert "field 'texBase': expected shape [3N, 80] = [960, 80], found [960, 79]" in message
    assert "field 'point_buf': expected shape [N, K] = [320, K], found [319, 8]" in message
    assert "field 'keypoints': index values must lie in 1..320" in message

    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="garbage.mat: cannot read as a MATLAB .mat file"):
        bfm_files.load_bfm_mat(garbage)


def test_npz_round_trip(small_mat, tmp_path):
    model = bfm_files.load_bfm_mat(small_mat)
    path = bfm_files.save_npz(model, tmp_path / "bfm.npz")
    again = bfm_files.load_npz(path)
    for name in mm.ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name), err_msg=name)
        assert getattr(again, name).dtype == getattr(model, name).dtype
    assert again.init_lit == model.init_lit and again.focal == model.focal
    with np.load(path) as data:
        broken = {k: data[k] for k in data.files if k != "skin_mask"}
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(ValueError, match="(?s)broken.npz.*missing field 'skin_mask'"):
        bfm_files.load_npz(tmp_path / "broken.npz")


def test_synthetic_is_deterministic_and_seeded():
    a, b, c = (
        sb.synthetic_bfm(5, (16, 20)),
        sb.synthetic_bfm(5, (16, 20)),
        sb.synthetic_bfm(6, (16, 20)),
    )
    for name in mm.ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.array_equal(a.id_base, c.id_base)
    np.testing.assert_array_equal(a.mean_shape, c.mean_shape)


def test_synthetic_geometry(synthetic):
    m = synthetic
    assert 3000 <= m.num_vertices <= 10_000 and m.keypoints.shape == (68,)
    assert len(set(np.asarray(m.keypoints).tolist())) == 68
    assert (m.id_base.shape, m.exp_base.shape, m.tex_base.shape) == (
        (3 * m.num_vertices, 80),
        (3 * m.num_vertices, 64),
        (3 * m.num_vertices, 80),
    )
    np.testing.assert_allclose(np.mean(m.mean_shape, axis=0), 0, atol=1e-6)
    out = reconstruct(m, np.zeros((1, 257), np.float32))
    # Normals as Deep3DFace computes them point outwards: towards the camera on the front.
    normals = np.asarray(out["normals"][0])
    front = np.asarray(m.front_mask)
    assert np.mean(normals[front], axis=0)[2] > 0.6 and np.all(normals[:, 2] > 0)
    # Outward also on the sides: normals point away from the head's centre.
    shape = np.asarray(m.mean_shape)
    assert np.mean(np.sum(normals * (shape - [0, 0, -0.5]), axis=1) > 0) > 0.98
    # Neutral face: landmarks inside the 224 image, the face ~150-200 px wide.
    lms = np.asarray(mm.image_coordinates(out["landmarks"]))[0]
    assert np.all((lms > 5) & (lms < 219))
    width = np.ptp(np.asarray(out["projected"][0, :, 0]))
    assert 150 < width < 200
    # iBUG order: chin (8) lowest in the image, brows above eyes above nose tip above mouth,
    # point 0 on the image's left.
    y = lms[:, 1]
    assert np.argmax(y[:17]) == 8 and lms[0, 0] < lms[16, 0]
    assert y[17:27].mean() < y[36:48].mean() < y[30] < y[48:68].mean() < y[8]
    colors = np.asarray(out["colors"][0])
    assert np.all((colors >= 0) & (colors <= 1))
    # Eyes (iris) and lips darker than skin.
    skin = np.asarray(m.skin_mask) > 0.5
    assert colors[np.asarray(m.keypoints)[48:60]].mean() < colors[skin].mean()


def test_synthetic_expressions_move_the_right_parts(synthetic):
    def lms(**groups):
        coeffs = np.zeros((1, 257), np.float32)
        for name, (index, value) in groups.items():
            start = dict((n, s) for n, s, _ in mm.COEFF_GROUPS)[name]
            coeffs[0, start + index] = value
        return np.asarray(mm.image_coordinates(reconstruct(synthetic, coeffs)["landmarks"]))[0]

    neutral = lms()
    jaw = lms(exp=(sb.EXP_BASES.index("jaw open"), 1.5))
    assert np.all(jaw[[7, 8, 9, 57], 1] > neutral[[7, 8, 9, 57], 1] + 8)  # chin moves down
    np.testing.assert_allclose(jaw[17:48], neutral[17:48], atol=0.5)  # brows, eyes, nose stay
    closed = lms(exp=(sb.EXP_BASES.index("eyes closed"), 1.0))
    assert np.all(closed[[37, 38, 43, 44], 1] > neutral[[37, 38, 43, 44], 1] + 2)
    smile = lms(exp=(sb.EXP_BASES.index("smile"), 1.5))
    assert smile[48, 1] < neutral[48, 1] - 2 and smile[54, 1] < neutral[54, 1] - 2
    assert smile[48, 0] < neutral[48, 0] and smile[54, 0] > neutral[54, 0]
    wide = lms(id=(sb.ID_BASES.index("head width"), 1.5))
    assert np.ptp(wide[:17, 0]) > np.ptp(neutral[:17, 0]) + 5


def test_probe_cli_end_to_end(tmp_path):
    model = sb.synthetic_bfm(seed=2, grid=(24, 30))
    mat = bfm_files.write_bfm_mat(model, tmp_path / "synthetic.mat")
    coeffs = random_coeffs(3, seed=4, scale=0.7)
    np.savez(tmp_path / "coeffs.npz", coeffs=coeffs)
    bfm_cli.main(
        [
            "--mat",
            str(mat),
            "--probe",
            str(tmp_path / "coeffs.npz"),
            "--probe-out",
            str(tmp_path / "out.npz"),
            "--out",
            str(tmp_path / "m.npz"),
        ]
    )
    vertex, _, color, lms, _ = TorchFaceModel(sio.loadmat(mat)).compute_for_render(
        torch.from_numpy(coeffs)
    )
    with np.load(tmp_path / "out.npz") as out:
        assert sorted(out.files) == ["colors", "landmarks", "vertices"]
        for name, want in [("vertices", vertex), ("colors", color), ("landmarks", lms)]:
            np.testing.assert_allclose(out[name], want.numpy(), atol=ATOL, rtol=1e-6)
    # The module entry point, from the converted .npz.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "converters.bfm",
            "--npz",
            str(tmp_path / "m.npz"),
            "--probe",
            str(tmp_path / "coeffs.npz"),
            "--probe-out",
            str(tmp_path / "again.npz"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "again.npz") as again, np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(again["landmarks"], out["landmarks"], atol=1e-5)
    np.savez(tmp_path / "bad.npz", coeffs=np.zeros((2, 200), np.float32))
    with pytest.raises(ValueError, match="bad.npz: coeffs must be"):
        bfm_cli.read_probe_coeffs(tmp_path / "bad.npz")
