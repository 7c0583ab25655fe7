#!/usr/bin/env python
"""Write the tetrahedral grids of DMTet (dreamkit/representations/dmtet.py) into assets/tets/.

    python scripts/make_tet_grid.py                  # assets/tets/tets_32.npz (the default grid)
    python scripts/make_tet_grid.py --resolution 24 40

Each grid is a cube lattice of R³ cells over [-1, 1]³, each cell split into the 6 tetrahedra of the Freudenthal
(Kuhn) triangulation, vertices shared, every tetrahedron positively oriented (dreamkit.representations.dmtet.
make_tet_grid). Saved compressed: ``vertices`` [(R+1)³, 3] float32 in [-1, 1] (the representation scales them by
``representation.grid_radius``), ``tets`` [6R³, 4] int32, ``resolution``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dreamkit.representations.dmtet import make_tet_grid

OUT = Path(__file__).resolve().parents[1] / "assets" / "tets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, nargs="+", default=[32])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for res in args.resolution:
        verts, tets = make_tet_grid(res)
        path = args.out / f"tets_{res}.npz"
        np.savez_compressed(path, vertices=verts.astype(np.float32), tets=tets.astype(np.int32),
                            resolution=np.int32(res))
        print(f"wrote {path}: {len(verts)} vertices, {len(tets)} tets, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
