"""Horizontal cross-sections of an exported mesh: how square they are.

Tells a box from a solid of revolution. A cube of side s, turned any way about the vertical, has radius s/2 towards
a face and s/√2 towards a corner, repeating every 90°; a round fit has the same radius at every angle.

    python scripts/cross_section.py outputs/gs_sds/a_red_cube@.../exports/mesh.glb [--heights -0.2 0 0.2]

Prints, at each height (relative to the bounding-box centre), the largest over the smallest mean radius in 5° bins
of the angle modulo 90° (:func:`dreamkit.eval.world_metrics.section_ratio`, also the `sections` column of
`dreamkit eval`): 1.36–1.38 for a cube, 1.00 for a cylinder. Reads the file with trimesh.
"""
from __future__ import annotations

import argparse


def main() -> None:
    import trimesh

    from dreamkit.eval.world_metrics import section_ratio

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mesh", help="GLB / OBJ / PLY path")
    parser.add_argument("--heights", type=float, nargs="+", default=[-0.2, 0.0, 0.2])
    args = parser.parse_args()
    mesh = trimesh.load(args.mesh, force="mesh")
    for h in args.heights:
        ratio = section_ratio(mesh.vertices, mesh.faces, height=h)
        print({"height": h, "max_over_min": None if ratio is None else round(ratio, 3),
               "extent": mesh.extents.round(3).tolist()})


if __name__ == "__main__":
    main()
