"""How many pixels the asymmetric objects' front features cover on the eval's front-count orbit, for the ground
truth and for a Janus copy (a second object turned 180° about +Y), with the count `dreamkit eval` gives each.

The front count (``dreamkit.eval.world_metrics.count_fronts``) calls a view "front seen" above a fixed fraction of
the image (0.002: 8 px at 64²) or, as `dreamkit eval` does since 2026-12-02, above 25% of the truth's own largest
feature fraction on the orbit; this prints both counts and what the truth itself covers, so that a change to the
count is checked on the truth first (every true object must count 1, every Janus copy anything but 1).

    python scripts/front_pixels_truth.py [--resolution 64 128]
"""
from __future__ import annotations

import argparse

import torch

from dreamkit.eval.benchmark import FRONT_COUNT as EVAL_COUNT, _front_render_cameras
from dreamkit.eval.world_metrics import count_fronts, feature_pixels
from dreamkit.render.raster import render_mesh_colors
from dreamkit.world import ASYMMETRIC_OBJECTS
from dreamkit.world.scenes import asymmetric_scene


def orbit_renderer(mesh: tuple, res: int):
    """The eval's front-count orbit of a coloured mesh, at res² (the orbit `dreamkit eval` counts fronts on)."""
    verts, faces, colours = mesh

    def render(az: torch.Tensor) -> torch.Tensor:
        return render_mesh_colors(verts, faces, _front_render_cameras(az, resolution=res), face_colors=colours,
                                  background=(1.0, 1.0, 1.0))[0]

    return render


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, nargs="+", default=[64, 128])
    args = p.parse_args()
    for name in ASYMMETRIC_OBJECTS:
        v, f, c = asymmetric_scene(name).mesh()
        janus = (torch.cat([v, v * torch.tensor([-1.0, 1.0, -1.0])]), torch.cat([f, f + len(v)]), torch.cat([c, c]))
        feature = [x / 255.0 for x in ASYMMETRIC_OBJECTS[name].front_feature]
        for res in args.resolution:
            truth = orbit_renderer((v, f, c), res)
            for label, mesh in (("truth", (v, f, c)), ("janus", janus)):
                render = orbit_renderer(mesh, res)
                fronts, fractions = count_fronts(render, feature)
                relative, _ = count_fronts(render, feature, truth=truth)
                linked, shaded = count_fronts(render, feature, truth=truth, **EVAL_COUNT)
                print(f"{name:8s} {label} {res:4d}²  fronts {fronts} (fixed 0.002), {relative} (truth-relative), "
                      f"{linked} (eval: truth-relative, shade, hysteresis)\n"
                      f"    feature px per 15° view: {feature_pixels(fractions, res)}\n"
                      f"    with the shade test:     {feature_pixels(shaded, res)}")


if __name__ == "__main__":
    main()
