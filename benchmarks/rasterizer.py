"""Rasterizer speed on a BFM-size face mesh (35,709 vertices, 70,789 triangles), CPU.

python -m benchmarks.rasterizer [--sizes 224 256] [--batch-sizes 1 8] [--iters N]
                                [--skip-brute-force] [--skip-jaxrenderer] [--write]

Timed work: `rasterize` (exact visibility) + `interpolate` (3-channel vertex colour) of a
synthetic mesh of exactly BFM's size -- the front of an ellipsoid, a 185 x 193 vertex grid
(+ 4 unused vertices) plus a 133-triangle rim, viewed as Deep3DFace does (camera at depth 10,
focal 1015 at 224 px, scaled with the image) so that it covers ~60% of the image; each batch
element is slightly turned and shifted. Beside it: a brute-force all-pairs JAX rasterizer
(every pixel against every triangle, chunked; batch 1 at the first size only, one timed run)
whose triangle ids must equal ours, and the `jaxrenderer` PyPI package if a throwaway venv
with it exists (`--jaxrenderer-python`, default /tmp/jr-venv/bin/python; create it with
`python -m venv /tmp/jr-venv && /tmp/jr-venv/bin/pip install jaxrenderer 'jax==0.4.13'
'jaxlib==0.4.13'` -- jaxrenderer 0.3.2 needs a jax that still knows `jax_array`). Each
reports the median of its timed runs after a compile run, whose time is given apart.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import report
from maskrenderer_jax.face3d import rasterizer

SECTION = "## Rasterizer (BFM-size mesh, CPU)"
NUM_VERTICES, NUM_TRIANGLES = 35709, 70789  # BFM_model_front.mat
FOCAL, CAMERA_DISTANCE, BASE_SIZE = 1015.0, 10.0, 224  # Deep3DFace's camera
JAXRENDERER_TIMEOUT_S = 1800


def bfm_size_mesh() -> tuple[np.ndarray, np.ndarray]:
    """([V, 3] float64 model-space points, [T, 3] int32) with BFM's V and T.

    The front of an ellipsoid (semi-axes 0.84 x 1.08 x 0.8, z towards the camera), longitude
    and latitude in [-100, 100] degrees so that the silhouette folds over as a face's does;
    triangles are front-facing (counter-clockwise on screen) where the surface faces the camera.
    """
    rows, cols = 185, 193  # 35,705 vertices, 70,656 triangles
    lat, lon = np.meshgrid(
        *(np.radians(np.linspace(-100, 100, n)) for n in (rows, cols)), indexing="ij"
    )
    points = np.stack(
        [0.84 * np.sin(lon) * np.cos(lat), 1.08 * np.sin(lat), 0.8 * np.cos(lon) * np.cos(lat)],
        axis=-1,
    ).reshape(-1, 3)
    index = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]
    grid = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)]).reshape(-1, 3)
    border = np.concatenate([index[0], index[1:, -1], index[-1, -2::-1], index[-2:0:-1, 0]])
    rim = np.stack([border, np.roll(border, -1), np.roll(border, -2)], -1)
    triangles = np.concatenate([grid, rim[: NUM_TRIANGLES - len(grid)]])
    padding = np.zeros((NUM_VERTICES - len(points), 3))  # unreferenced, as BFM has none
    return np.concatenate([points, padding]), triangles.astype(np.int32)


def posed_vertices(points: np.ndarray, size: int, batch: int, seed: int = 0) -> np.ndarray:
    """[B, V, 3] float32 image coordinates (x right, y down, pixels) and view depth of the
    mesh turned by up to 10 degrees about y and shifted by up to 0.05, per batch element."""
    rng = np.random.default_rng(seed)
    focal, centre = FOCAL * size / BASE_SIZE, size / 2
    out = []
    for _ in range(batch):
        yaw = np.radians(rng.uniform(-10, 10))
        rotation = np.array(
            [[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]]
        )
        world = points @ rotation.T + np.append(rng.uniform(-0.05, 0.05, 2), 0)
        depth = CAMERA_DISTANCE - world[:, 2]
        x = focal * world[:, 0] / depth + centre
        y = centre - focal * world[:, 1] / depth  # image y points down
        out.append(np.stack([x, y, depth], -1))
    return np.asarray(out, np.float32)


def vertex_colours(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (batch, NUM_VERTICES, 3)).astype(np.float32)


def timed(fn, args, iters: int) -> dict:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times, cpu = [], []
    for _ in range(iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "compile_s": compile_s,
        "median_s": statistics.median(times),
        "cpu_s": statistics.median(cpu),  # all threads: less sensitive to a busy machine
        "out": out,
    }


def ours(size: int):
    def render(vertices, triangles, colours):
        fragments = rasterizer.rasterize(vertices, triangles, size, size)
        return fragments, rasterizer.interpolate(colours, fragments, triangles)

    return jax.jit(render)


def brute_force(size: int, pixels_per_chunk: int = 32):
    """All-pairs visibility: every pixel centre against every triangle, nearest wins (same
    inside rule as the rasterizer: edges oriented low -> high vertex index, top-left ties),
    `pixels_per_chunk` pixels at a time to bound memory. [1, V, 3] -> [1, H, W] ids."""

    def ids(vertices, triangles):
        sorted_tris = jnp.sort(triangles, axis=1)
        c = vertices[0][sorted_tris]  # [T, 3 corners, 3]
        area = (c[:, 1, 0] - c[:, 0, 0]) * (c[:, 2, 1] - c[:, 0, 1]) - (c[:, 1, 1] - c[:, 0, 1]) * (
            c[:, 2, 0] - c[:, 0, 0]
        )
        orient = jnp.where(area > 0, 1.0, -1.0)
        edges = [(0, 1, orient), (1, 2, orient), (0, 2, -orient)]
        valid = (area != 0) & jnp.all(c[..., 2] > 0, axis=-1)
        centres = jnp.stack(jnp.meshgrid(jnp.arange(size), jnp.arange(size)), -1) + 0.5
        centres = centres.reshape(-1, pixels_per_chunk, 2).astype(jnp.float32)

        def chunk(p):
            px, py = p[:, 0:1], p[:, 1:2]
            inside = valid[None]
            e = []
            for i, j, sign in edges:
                dx = sign * (c[:, j, 0] - c[:, i, 0])
                dy = sign * (c[:, j, 1] - c[:, i, 1])
                ek = dx * (py - c[:, i, 1]) - dy * (px - c[:, i, 0])
                topleft = (dy < 0) | ((dy == 0) & (dx > 0))
                inside = inside & ((ek > 0) | ((ek == 0) & topleft))
                e.append(ek)
            depth = (e[0] + e[1] + e[2]) / (
                e[0] / c[:, 2, 2] + e[1] / c[:, 0, 2] + e[2] / c[:, 1, 2]
            )
            depth = jnp.where(inside, depth, jnp.inf)
            best = jnp.argmin(depth, axis=1)  # first (lowest id) among equal depths
            return jnp.where(jnp.isfinite(jnp.min(depth, axis=1)), best, -1)

        return jax.lax.map(chunk, centres).reshape(1, size, size)

    return jax.jit(ids)


JAXRENDERER_SCRIPT = r"""
import json, sys, time
import numpy as np
import jax, jax.numpy as jnp
import renderer
from renderer.pipeline import render
from renderer.shaders.gouraud import GouraudExtraInput, GouraudShader

data = np.load(sys.argv[1])
size = int(data["size"])
points, triangles, colours = data["points"], data["triangles"], data["colours"]
camera = renderer.Renderer.create_camera_from_parameters(renderer.CameraParameters(
    viewWidth=size, viewHeight=size, hfov=float(data["fov"]), vfov=float(data["fov"]),
    position=jnp.array([0.0, 0.0, 10.0]), target=jnp.zeros(3), up=jnp.array([0.0, 1.0, 0.0])))
extra = GouraudExtraInput(
    position=jnp.asarray(points, jnp.float32), colour=jnp.asarray(colours, jnp.float32),
    normal=jnp.asarray(points / np.linalg.norm(points, axis=1, keepdims=True), jnp.float32),
    light=renderer.LightSource(direction=jnp.array([0.0, 0.0, 1.0])))
buffers = renderer.Renderer.create_buffers(size, size)
run = jax.jit(lambda extra: render(camera, GouraudShader, buffers, jnp.asarray(triangles), extra))
start = time.perf_counter(); jax.block_until_ready(run(extra)); first = time.perf_counter() - start
start = time.perf_counter(); jax.block_until_ready(run(extra)); again = time.perf_counter() - start
print(json.dumps({"compile_s": first - again, "median_s": again, "jax": jax.__version__}))
"""


def jaxrenderer(python: str, points, triangles, colours, size: int) -> dict:
    """Times the jaxrenderer package (Gouraud shader, vertex colours) in its own venv."""
    if not Path(python).exists():
        return {"error": f"not available: no venv at {python} (see module docstring)"}
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Path(tmp) / "mesh.npz"
        fov = np.degrees(2 * np.arctan(BASE_SIZE / 2 / FOCAL))
        used = np.unique(triangles)  # jaxrenderer normalises every vertex's normal
        remap = np.zeros(len(points), np.int32)
        remap[used] = np.arange(len(used))
        np.savez(
            mesh,
            points=points[used],
            triangles=remap[triangles],
            colours=colours[used],
            size=size,
            fov=fov,
        )
        script = Path(tmp) / "run.py"
        script.write_text(JAXRENDERER_SCRIPT)
        try:
            proc = subprocess.run(
                [python, str(script), str(mesh)],
                capture_output=True,
                text=True,
                timeout=JAXRENDERER_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"not available: timed out after {JAXRENDERER_TIMEOUT_S} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"not available: {last[:160]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| implementation | image | batch | ms/image (median) | CPU ms/image | compile s | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        value = cpu = compile_s = "—"
        if "error" not in r:
            value = f"{1e3 * r['median_s'] / r['batch']:.1f}"
            compile_s = f"{r['compile_s']:.1f}"
        if "cpu_s" in r:
            cpu = f"{1e3 * r['cpu_s'] / r['batch']:.1f}"
        note = r.get("error", r.get("note", ""))
        lines.append(
            f"| {r['name']} | {r['size']}² | {r['batch']} | {value} | {cpu} | {compile_s} "
            f"| {note} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rasterizer", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=10, help="timed runs of ours")
    parser.add_argument("--skip-brute-force", action="store_true")
    parser.add_argument("--skip-jaxrenderer", action="store_true")
    parser.add_argument("--jaxrenderer-python", default="/tmp/jr-venv/bin/python")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)

    start_facts = report.facts()  # load average before we add to it
    points, triangles = bfm_size_mesh()
    triangles_j = jnp.asarray(triangles)
    rows, reference_ids = [], {}
    for size in args.sizes:
        render = ours(size)
        for batch in args.batch_sizes:
            vertices = jnp.asarray(posed_vertices(points, size, batch))
            colours = jnp.asarray(vertex_colours(batch))
            r = timed(render, (vertices, triangles_j, colours), args.iters)
            ids = np.asarray(r.pop("out")[0].triangle_id)
            reference_ids[size, batch] = ids
            note = f"visibility + interpolation; coverage {np.mean(ids >= 0):.0%}"
            rows.append(
                dict(r, name="ours: rasterize + interpolate", size=size, batch=batch, note=note)
            )
            print(table(rows[-1:]).splitlines()[-1], flush=True)

    size = args.sizes[0]
    if not args.skip_brute_force:
        vertices = jnp.asarray(posed_vertices(points, size, 1))
        r = timed(brute_force(size), (vertices, triangles_j), 1)
        ids = np.asarray(r.pop("out"))
        ours_ids = reference_ids.get((size, 1))
        same = "" if ours_ids is None else f"; ids equal to ours: {np.mean(ids == ours_ids):.4%}"
        rows.append(
            dict(
                r,
                name="brute force all-pairs JAX (visibility only)",
                size=size,
                batch=1,
                note=f"1 timed run{same}",
            )
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if not args.skip_jaxrenderer:
        colours = vertex_colours(1)[0]
        r = jaxrenderer(args.jaxrenderer_python, points, triangles, colours, size)
        note = f"Gouraud shader, 1 timed run, jax {r['jax']}" if "jax" in r else ""
        rows.append(dict(r, name="jaxrenderer (PyPI)", size=size, batch=1, note=note))
        print(table(rows[-1:]).splitlines()[-1], flush=True)

    intro = (
        "Exact visibility (triangle id per pixel, z-buffer) + perspective-correct "
        "interpolation of a 3-channel vertex colour, for a synthetic mesh of BFM's size "
        "(35,709 vertices, 70,789 triangles) posed as Deep3DFace does (~60% of the image "
        f"covered). ms/image = median wall time over {args.iters} runs / batch, after a "
        "compile run; CPU ms/image = the same for the process CPU time (all threads; XLA "
        "uses both cores), steadier than wall time on a shared machine. Target: <= 5 ms "
        "per image at 224², batch 8."
    )
    report.publish(SECTION, intro, table(rows), start_facts, args.write)


if __name__ == "__main__":
    main()
