"""Horizontal cross-sections of an exported mesh: its radius around the vertical axis, by angle.

Tells a box from a solid of revolution. A cube of side s, turned any way about the vertical, has radius s/2 towards
a face and s/√2 towards a corner (a ratio of 1.41), repeating every 90°; a round fit has the same radius at every
angle (ratio 1).

    python scripts/cross_section.py outputs/gs_sds/a_red_cube@.../exports/mesh.glb [--heights -0.2 0 0.2]

Prints, at each height (relative to the bounding-box centre), the mean radius in 5° bins of the angle modulo 90°,
their smallest and largest, and `max_over_min`: 1.36–1.38 for a cube (at 5° bins, turned any way), 1.0 for a
cylinder. Reads the file with trimesh.
"""
from __future__ import annotations

import argparse

import numpy as np


def _resample(polyline: np.ndarray, step: float = 0.005) -> np.ndarray:
    """Points every ``step`` along a polyline (a box's section has only its corners as vertices)."""
    out = [polyline[:1]]
    for a, b in zip(polyline[:-1], polyline[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.append(a + (b - a) * (np.arange(1, n + 1) / n)[:, None])
    return np.vstack(out)


def sections(path: str, heights: list[float], bin_deg: float = 5.0) -> list[dict]:
    import trimesh

    mesh = trimesh.load(path, force="mesh")
    centre = mesh.bounds.mean(0)
    rows = []
    for h in heights:
        section = mesh.section(plane_origin=[centre[0], centre[1] + h, centre[2]], plane_normal=[0, 1, 0])
        if section is None:
            rows.append({"height": h, "empty": True})
            continue
        points = np.vstack([_resample(line) for line in section.discrete])
        d = points[:, [0, 2]] - centre[[0, 2]]
        radius = np.linalg.norm(d, axis=1)
        angle = np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 90.0
        n_bins = int(round(90 / bin_deg))
        bins = np.clip((angle // bin_deg).astype(int), 0, n_bins - 1)
        by_bin = np.array([radius[bins == k].mean() for k in range(n_bins) if (bins == k).any()])
        lo, hi = float(by_bin.min()), float(by_bin.max())
        rows.append({"height": h, "radius_min": round(lo, 3), "radius_max": round(hi, 3),
                     "max_over_min": round(hi / lo, 3), "extent": mesh.extents.round(3).tolist()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mesh", help="GLB / OBJ / PLY path")
    parser.add_argument("--heights", type=float, nargs="+", default=[-0.2, 0.0, 0.2])
    args = parser.parse_args()
    for row in sections(args.mesh, args.heights):
        print(row)


if __name__ == "__main__":
    main()
