"""Ancestral-free DDIM sampling (Song et al. 2021, η = 0) through the ``Prior`` interface, with CFG.

Works for every prior: latent priors are decoded at the end, multi-view priors and the oracle receive cameras.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..cameras import Cameras, orbit_cameras


def sample_shape(prior) -> tuple[int, int, int]:
    factor = int(getattr(prior, "vae_scale_factor", 1)) if getattr(prior, "latent", False) else 1
    side = int(prior.resolution) // factor
    return int(prior.channels), side, side


def sample_cameras(n: int, resolution: int, elevation: float = 15.0, distance: float = 2.75,
                   fovy: float = 40.0, group: int = 0) -> Cameras:
    """``n`` cameras around the origin for sampling.

    ``group`` = 0 (or 1): one orbit, 360°/n apart. ``group`` = V > 1 (a multi-view prior denoises consecutive groups
    of V images jointly and was trained on views 360°/V apart): ``n / V`` groups, each one 360°/V apart as the prior
    expects, group g turned by g·360°/n, so that 8 views of a 4-view prior are two 90°-spaced groups that together
    cover the orbit every 45°.
    """
    if group <= 1:
        return orbit_cameras(n, resolution, resolution, elevation=elevation, distance=distance, fovy=fovy)
    if n % group:
        raise ValueError(f"{n} views are not whole groups of the prior's {group} joint views")
    return Cameras.cat([orbit_cameras(group, resolution, resolution, elevation=elevation, distance=distance,
                                      fovy=fovy, start_azimuth=g * 360.0 / n) for g in range(n // group)])


def sample_clip_cameras(clips: int, frames: int, resolution: int, elevation: float = 15.0, distance: float = 2.75,
                        fovy: float = 40.0, azimuth: float = 0.0, tau0: float = 0.0) -> Cameras:
    """``clips × frames`` cameras for sampling a video prior: each clip one still camera (at ``azimuth``, default
    the world's front) repeated over its frames at times τ_i = ``tau0`` + i/``frames``, clip-major."""
    one = orbit_cameras(1, resolution, resolution, elevation=elevation, distance=distance, fovy=fovy,
                        start_azimuth=azimuth)
    cams = Cameras.cat([one] * (clips * frames))
    cams.time = (tau0 + torch.arange(frames, dtype=torch.float32) / frames).repeat(clips).to(cams.c2w)
    return cams


@torch.no_grad()
def ddim_sample(prior, prompts: Sequence[str], steps: int = 50, guidance_scale: float = 7.5,
                negative: Optional[Sequence[str]] = None, cameras: Optional[Cameras] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One sample per prompt (per camera when ``cameras`` is given, prompts then repeat) → [B, 3, H, W] in [0, 1]."""
    device = prior.alphas_cumprod.device
    b = len(prompts)
    text = prior.encode_text(list(prompts), list(negative) if negative is not None else None)
    c, h, w = sample_shape(prior)
    x = torch.randn((b, c, h, w), generator=generator, device="cpu").to(device)
    abar = prior.alphas_cumprod.to(device).float()
    n = abar.shape[0]
    timesteps = torch.linspace(n - 1, 0, steps).round().long().tolist()
    cams = cameras.to(device) if cameras is not None else None
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t = abar[t]
        a_prev = abar[t_prev] if t_prev >= 0 else torch.tensor(1.0, device=device)
        tt = torch.full((b,), t, dtype=torch.long, device=device)
        if guidance_scale == 1.0:
            eps = prior.predict(x, tt, text.cond, cams)
        else:
            eps = prior.predict_cfg(x, tt, text, guidance_scale, cams)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if not getattr(prior, "latent", False):
            x0 = x0.clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return prior.decode(x)


def ddim_sample_clips(prior, clip_prompts: Sequence[str], steps: int = 50, guidance_scale: float = 7.5,
                      tau0: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One clip per prompt from a video prior (``prior.frames`` F ≥ 2), each seen by the still front camera of
    :func:`sample_clip_cameras` at frame times ``tau0`` + i/F (default τ₀ = 1/(2F): the frames' centres, away from
    τ = 0 and 1) → [N, F, 3, H, W] on the CPU, in [0, 1]. What ``dreamkit sample`` and the motion probes draw."""
    frames, res = int(prior.frames), int(prior.resolution)
    n = len(clip_prompts)
    cams = sample_clip_cameras(n, frames, res, tau0=0.5 / frames if tau0 is None else tau0)
    prompts = [p for p in clip_prompts for _ in range(frames)]
    out = ddim_sample(prior, prompts, steps=steps, guidance_scale=guidance_scale, cameras=cams, generator=generator)
    return out.cpu().reshape(n, frames, 3, res, res)
