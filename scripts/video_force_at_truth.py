"""What a video prior's SDS asks of the truth: the force on each frame's object position, at the true moving object.

    python scripts/video_force_at_truth.py ["a red cube moving right"] [--prior tiny-video] [--azimuths 0 30 -30]

Renders the world's object doing the prompted motion (world frame, as a fit's deformation moves it) in one clip of 8
frames (τ_f = (f + ½)/8, a still camera at elevation 15°, distance 2.75, fovy 40° per azimuth), then for each
timestep band estimates the SDS force on frame f's object position along world X and Y and on its height (a stretch
along Y about its centre):

    F_f = −E_ε[(ε̂_cfg(x_t) − ε) · ∂x/∂p_f]      (CFG 10, w(t) = 1, 24 noise draws)

with ∂x/∂p_f a central difference of frame f's render as the object moves by ±0.05 along the axis (or is stretched
by ±5 % in height; that force reads as a relative height change). A positive F_y at a frame means SDS pushes the
object up there. The force is divided by |∂x/∂p_f|², so it reads as the displacement (world units) one unit-rate step
of gradient descent would ask for. Used to ask whether the lift at the ends of the red cube's translations
(benchmarks/2026-12-06/gs4d_video_motions8_cam/) comes from the prior.
"""
from __future__ import annotations

import argparse

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prompt", nargs="?", default="a red cube moving right")
    p.add_argument("--prior", default="tiny-video")
    p.add_argument("--azimuths", type=float, nargs="+", default=[0.0, 30.0, -30.0])
    p.add_argument("--draws", type=int, default=24)
    p.add_argument("--steps", type=int, nargs="+", default=[200, 400, 600, 800, 950])
    p.add_argument("--time-window", type=float, nargs=2, default=[0.0625, 0.9375])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dreamkit.cameras import cameras_from_spherical
    from dreamkit.priors.pixel import PixelDiffusionPrior
    from dreamkit.world.captions import parse_prompt
    from dreamkit.world.dataset import DEFAULT_BACKGROUND, render_scene_views
    from dreamkit.world.motion import split_motion_caption, transform_points

    obj, motion = split_motion_caption(args.prompt)
    scene = parse_prompt(obj)
    prior = PixelDiffusionPrior(args.prior, warn_outside_world=False, time_window=tuple(args.time_window))
    prior.requires_grad_(False)
    frames, res = prior.frames, prior.resolution
    text = prior.encode_text([args.prompt])
    cond = text.select(torch.zeros(frames, dtype=torch.long))
    taus = (torch.arange(frames, dtype=torch.float32) + 0.5) / frames
    verts, _, _ = scene.mesh()
    moved = transform_points(verts, motion, taus)  # [F, V, 3]
    delta = 0.05
    gen = torch.Generator().manual_seed(0)
    print(f"prompt {args.prompt!r}, prior {args.prior}: force on each frame's position (world units), + = right/up")
    for az in args.azimuths:
        n = frames
        cams = cameras_from_spherical(torch.full((n,), 15.0), torch.full((n,), az), torch.full((n,), 2.75),
                                      torch.full((n,), 40.0), res, res, time=taus)

        def frame(f: int, offset: torch.Tensor, stretch: float = 0.0) -> torch.Tensor:
            # frame f with the object moved by offset [3] and stretched in height about its centre → [3, r, r]
            v = moved[f] + offset
            if stretch:
                centre = v[:, 1].mean()
                v = v.clone()
                v[:, 1] = centre + (v[:, 1] - centre) * (1 + stretch)
            rgb, _, _ = render_scene_views(scene, cams[f:f + 1], DEFAULT_BACKGROUND, ssaa=4, verts=v)
            return prior.encode(rgb.permute(0, 3, 1, 2).contiguous())[0]

        zero = torch.zeros(3)
        x = torch.stack([frame(f, zero) for f in range(n)])
        jac = {}
        for name, axis in (("x", 0), ("y", 1), ("height", None)):
            cols = torch.zeros_like(x)
            for f in range(n):
                if axis is None:
                    plus, minus = frame(f, zero, delta), frame(f, zero, -delta)
                else:
                    off = torch.zeros(3)
                    off[axis] = delta
                    plus, minus = frame(f, off), frame(f, -off)
                cols[f] = (plus - minus) / (2 * delta)
            jac[name] = cols
        print(f"\nazimuth {az:+.0f}°  | t | " + " | ".join(f"τ={t:.2f}" for t in taus.tolist()) + " |")
        for t in args.steps:
            tt = torch.full((n,), t)
            abar = prior.alphas_cumprod[tt].view(-1, 1, 1, 1)
            acc = torch.zeros_like(x)
            for _ in range(args.draws):
                noise = torch.randn(x.shape, generator=gen)
                xt = abar.sqrt() * x + (1 - abar).sqrt() * noise
                with torch.no_grad():
                    eps = prior.predict_cfg(xt, tt, cond, 10.0, cams)
                acc += eps - noise
            resid = acc / args.draws
            for name in ("x", "y", "height"):
                j = jac[name]
                force = -(resid * j).flatten(1).sum(1) / j.flatten(1).square().sum(1).clamp_min(1e-8)
                print(f"  F_{name} t={t:3d} | " + " | ".join(f"{v:+.3f}" for v in force.tolist()) + " |")


if __name__ == "__main__":
    main()
