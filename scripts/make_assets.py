"""Write the procedural sample meshes under assets/meshes/ (deterministic: same bytes on every run).

    python scripts/make_assets.py [--out assets/meshes]

house.ply: an asymmetric, colourful house whose front (door) faces +Z, +Y up, bounding box centred at the origin,
inside a sphere of radius 0.68. Each part is one colour; parts do not share vertices, so the PLY vertex colours
reproduce flat face colours exactly. See assets/meshes/README.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import trimesh

# Colours as 8-bit RGB so the PLY round trip is exact.
BODY = (240, 196, 90)  # warm yellow walls
ROOF = (196, 40, 32)  # red roof
DOOR = (90, 50, 25)  # dark brown door
WINDOW = (110, 185, 240)  # light blue glass
CHIMNEY = (100, 105, 130)  # slate grey-blue chimney

BODY_HALF_X, BODY_HEIGHT, BODY_HALF_Z = 0.40, 0.50, 0.30
EAVE_HALF_X, EAVE_HALF_Z, RIDGE_Y = 0.46, 0.36, 0.82
MAX_RADIUS = 0.68


def box(lo, hi) -> trimesh.Trimesh:
    """Axis-aligned box from corner ``lo`` to corner ``hi`` (outward winding)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return trimesh.creation.box(extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2))


def oriented(vertices, faces) -> trimesh.Trimesh:
    """A part from explicit triangles; windings are made to point away from the part's centroid (convex parts)."""
    vertices = np.asarray(vertices, float)
    faces = np.asarray(faces, np.int64)
    centre = vertices.mean(0)
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = (normal * (tri.mean(1) - centre)).sum(-1) < 0
    faces[inward] = faces[inward][:, ::-1]
    return trimesh.Trimesh(vertices, faces, process=False)


def roof() -> trimesh.Trimesh:
    """The two sloped roof planes and the soffit under them (a prism whose ridge runs along X)."""
    y0 = BODY_HEIGHT
    v = [
        (-EAVE_HALF_X, y0, EAVE_HALF_Z), (EAVE_HALF_X, y0, EAVE_HALF_Z),  # 0 1 front eave
        (-EAVE_HALF_X, y0, -EAVE_HALF_Z), (EAVE_HALF_X, y0, -EAVE_HALF_Z),  # 2 3 back eave
        (-EAVE_HALF_X, RIDGE_Y, 0.0), (EAVE_HALF_X, RIDGE_Y, 0.0),  # 4 5 ridge
    ]
    f = [(0, 1, 5), (0, 5, 4), (2, 4, 5), (2, 5, 3), (0, 2, 3), (0, 3, 1)]
    return oriented(v, f)


def gables() -> trimesh.Trimesh:
    """The wall ends under the roof on the -X and +X sides (wall colour): pentagons reaching up to the roof planes."""
    y0 = BODY_HEIGHT
    y_wall_top = y0 + (RIDGE_Y - y0) * (1 - BODY_HALF_Z / EAVE_HALF_Z)  # roof height above the wall's edge
    parts = []
    for sx in (-1.0, 1.0):
        x = sx * BODY_HALF_X
        v = np.array([(x, y0, BODY_HALF_Z), (x, y0, -BODY_HALF_Z), (x, y_wall_top, -BODY_HALF_Z),
                      (x, RIDGE_Y, 0.0), (x, y_wall_top, BODY_HALF_Z)])
        face = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4]])
        normal = np.cross(v[1] - v[0], v[2] - v[0])
        if normal[0] * sx < 0:
            face = face[:, ::-1]
        parts.append(trimesh.Trimesh(v, face, process=False))
    return trimesh.util.concatenate(parts)


def house() -> trimesh.Trimesh:
    parts = [
        (box((-BODY_HALF_X, 0.0, -BODY_HALF_Z), (BODY_HALF_X, BODY_HEIGHT, BODY_HALF_Z)), BODY),
        (gables(), BODY),
        (roof(), ROOF),
        # Door on the front (+Z), left of centre, protruding so it is visible and rasterizes in front of the wall.
        (box((-0.24, 0.0, BODY_HALF_Z - 0.01), (-0.08, 0.32, BODY_HALF_Z + 0.025)), DOOR),
        # Front window, right of the door.
        (box((0.06, 0.20, BODY_HALF_Z - 0.01), (0.26, 0.38, BODY_HALF_Z + 0.015)), WINDOW),
        # Side window on the +X wall only (the -X wall is blank).
        (box((BODY_HALF_X - 0.01, 0.18, -0.12), (BODY_HALF_X + 0.015, 0.38, 0.12)), WINDOW),
        # Chimney off-centre: towards +X, on the back slope, rising above the ridge.
        (box((0.16, 0.55, -0.20), (0.28, 0.95, -0.08)), CHIMNEY),
    ]
    meshes = []
    for mesh, colour in parts:
        mesh = trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), process=False)
        mesh.visual.vertex_colors = np.tile(np.array([*colour, 255], np.uint8), (len(mesh.vertices), 1))
        meshes.append(mesh)
    # concatenate keeps each part's own vertices, so no vertex is shared between colour regions.
    out = trimesh.util.concatenate(meshes)
    lo, hi = out.vertices.min(0), out.vertices.max(0)
    vertices = out.vertices - (lo + hi) / 2
    vertices *= MAX_RADIUS / np.linalg.norm(vertices, axis=1).max()
    colors = np.asarray(out.visual.vertex_colors).copy()
    result = trimesh.Trimesh(np.round(vertices.astype(np.float32), 6), np.asarray(out.faces), process=False)
    result.visual.vertex_colors = colors
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "meshes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    mesh = house()
    path = args.out / "house.ply"
    path.write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False))
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    print(f"wrote {path}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
          f"bbox {np.round(lo, 3).tolist()} .. {np.round(hi, 3).tolist()}, "
          f"max radius {np.linalg.norm(mesh.vertices, axis=1).max():.3f}")


if __name__ == "__main__":
    main()
