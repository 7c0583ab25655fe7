"""Which size does a prior's SDS gradient prefer? Probe it at the ground truth, scaled.

    python scripts/sds_scale_probe.py [--prior tiny-mv] [--prompt "a red cube"] [--scales 0.8 0.9 1 1.1 1.25 1.4]
                                      [--guidance 10] [--t-range 0.02 0.98] [--samples 64]

The world scene of PROMPT is scaled about its centre by s and rendered at the recipe's training cameras (groups of
``views`` cameras for a multi-view prior; random lights, as the prior's data). SDS (the shipped ``SDSGuidance``: same
timestep range, weighting, classifier-free guidance) gives an image-space gradient g; its component along the
render's change with scale, dE/ds ≈ <g, (x(s+δ) − x(s−δ)) / 2δ>, says which way SDS would move the size of an object
that had exactly the truth's shape. dE/ds < 0: SDS grows it; > 0: shrinks it. The scale where dE/ds crosses zero is
the size SDS prefers along this one direction (1 = the truth's). Noise, timesteps, cameras and lights are common
random numbers across scales, so the curve is smooth in s.

Why: the multi-view recipe's fits come out 15–50% too large (docs/results.md); this tells
whether the prior's SDS field itself points that way at the truth, or whether the fit's path does it
(`benchmarks/2026-12-03/mv_size/`). ``scale_curve`` is tested on the oracle prior, whose SDS gradient vanishes
exactly at its target, so that the crossing must be 1 (tests/test_sds_scale_probe.py).
"""
from __future__ import annotations

import argparse
import json
from types import SimpleNamespace


def scale_curve(guidance, text, render, cameras, t, noise, scales, delta=0.02, chunk=32, views=1):
    """dE/ds at each scale: the SDS image gradient (``guidance``, an SDSGuidance, with the given timesteps ``t`` [N]
    and ``noise`` [N, C, r, r]) dotted with the central difference of ``render(s)`` [N, 3, r, r] in s, summed over
    each group of ``views`` images. Returns rows {"scale", "dE_ds" (mean over groups), "sem"}."""
    import torch

    from dreamkit.batch import Batch

    rows = []
    n = len(cameras)
    for s in scales:
        x = render(s)
        dx_ds = (render(s + delta) - render(s - delta)) / (2 * delta)
        dots = []
        for i in range(0, n, chunk):
            idx = torch.arange(i, min(i + chunk, n))
            img = x[idx].clone().requires_grad_(True)
            b = img.shape[0]
            cond = text.select(torch.zeros(b, dtype=torch.long))
            out = guidance.distill(img, Batch(cameras[idx], cond), 0, t=t[idx], noise=noise[idx])
            (g,) = torch.autograd.grad(out["loss_sds"] * b, img)
            dots.append((g * dx_ds[idx]).flatten(1).sum(1))
        per_group = torch.cat(dots).view(-1, views).sum(1)
        sem = (per_group.std() / per_group.numel() ** 0.5).item() if per_group.numel() > 1 else 0.0
        rows.append({"scale": float(s), "dE_ds": per_group.mean().item(), "sem": sem})
    return rows


def preferred_scale(rows):
    """Where dE/ds goes from negative (grow) to non-negative (shrink), linearly interpolated; None if it does not."""
    for a, b in zip(rows, rows[1:]):
        if a["dE_ds"] < 0 <= b["dE_ds"]:
            return a["scale"] + (b["scale"] - a["scale"]) * (-a["dE_ds"]) / (b["dE_ds"] - a["dE_ds"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default="tiny-mv", help="prior name or folder (pixel priors)")
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4])
    parser.add_argument("--guidance", type=float, default=10.0, help="classifier-free guidance scale")
    parser.add_argument("--t-range", type=float, nargs=2, default=[0.02, 0.98],
                        help="min and max step percent of the timesteps drawn")
    parser.add_argument("--samples", type=int, default=64, help="camera groups (each with its own t, noise, light)")
    parser.add_argument("--batch", type=int, default=8, help="camera groups per prior call")
    parser.add_argument("--delta", type=float, default=0.02, help="finite-difference step of the scale")
    parser.add_argument("--ssaa", type=int, default=4, help="supersampling of the renders (smooth in s)")
    parser.add_argument("--axes", default="xyz", help="which axes the scale applies to (xyz: uniform; y: the height "
                        "only, xz: the width only, the others kept at the truth's) — e.g. whether SDS grows a cube "
                        "into a column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the curve here")
    args = parser.parse_args(argv)

    import torch

    from dreamkit.batch import Layout
    from dreamkit.config import CameraConfig
    from dreamkit.errors import DreamkitError
    from dreamkit.guidance.sds import SDSConfig, SDSGuidance
    from dreamkit.priors.pixel import PixelDiffusionPrior
    from dreamkit.world.captions import parse_prompt
    from dreamkit.world.dataset import DEFAULT_BACKGROUND, render_scene_views, sample_lights, sample_training_cameras

    scene = parse_prompt(args.prompt)
    if scene is None:
        raise DreamkitError(f"{args.prompt!r} is not a tiny-world prompt — the probe needs the truth to scale")
    prior = PixelDiffusionPrior(args.prior, warn_outside_world=False)
    prior.requires_grad_(False)
    views = int(prior.views)
    guidance = SDSGuidance(SDSConfig(guidance_scale=args.guidance, min_step_percent=args.t_range[0],
                                     max_step_percent=args.t_range[1], weighting="sds"), prior, max_steps=1)
    res = int(prior.resolution)

    gen = torch.Generator().manual_seed(args.seed)
    n = args.samples * views
    cams = sample_training_cameras(n, gen, resolution=res, camera=CameraConfig(), views=views)
    lights = sample_lights(n, gen)
    t = guidance.sample_timesteps(n, 0, gen, torch.device("cpu"), Layout(views=views))   # one t per group of views
    noise = torch.randn(n, prior.channels, res, res, generator=gen)
    text = prior.encode_text([args.prompt])

    verts0, faces, colours = scene.mesh()
    centre = (verts0.min(0).values + verts0.max(0).values) / 2

    if not args.axes or set(args.axes) - set("xyz"):
        raise DreamkitError(f"--axes {args.axes!r}: use letters of xyz (e.g. xyz, y, xz)")
    on = torch.tensor([float(a in args.axes) for a in "xyz"])

    def render(s: float) -> torch.Tensor:
        factor = 1 + (s - 1) * on  # s on the chosen axes, 1 on the others
        scaled = SimpleNamespace(mesh=lambda device="cpu": (centre + (verts0 - centre) * factor, faces, colours),
                                 closed=scene.closed)
        rgb, _alpha, _ = render_scene_views(scaled, cams, background=DEFAULT_BACKGROUND, lights=lights,
                                            ssaa=args.ssaa)
        return rgb.permute(0, 3, 1, 2).contiguous()

    rows = scale_curve(guidance, text, render, cams, t, noise, args.scales, args.delta, args.batch * views, views)
    for row in rows:
        print(f"scale {row['scale']:5.2f}   dE/ds {row['dE_ds']:+9.4f} ± {row['sem']:.4f}   "
              f"({'grows' if row['dE_ds'] < 0 else 'shrinks'})")
    crossing = preferred_scale(rows)
    print(f"{args.prompt!r}, {args.prior}, guidance {args.guidance}, t in {args.t_range}, axes {args.axes}: SDS prefers scale "
          + (f"≈ {crossing:.2f} of the truth" if crossing is not None else "outside the probed range"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "preferred_scale": crossing}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
