"""Does a camera-aware prior read the azimuth?  python ring_az.py <prior folder> out.png

Samples "a red ring" (DDIM 30 steps, guidance 7.5) with the camera at azimuth 0°, 45°, 90° and 180° (one row each, the
same 4 noises in the columns), and prints how much one UNet call on the same noisy input at t = 500 changes between
the camera at 0° and at 90° (max |Δ|, against the mean |output|)."""
import sys

import numpy as np
import torch
from PIL import Image

from dreamkit.cameras import Cameras, orbit_cameras
from dreamkit.cli import _prior_config_for
from dreamkit.priors.configs import build_prior
from dreamkit.priors.sampling import ddim_sample

prior = build_prior(_prior_config_for(sys.argv[1]), torch.device("cpu"))
res = int(prior.resolution)
print(getattr(prior, "view_settings", None))


def camera(az: float) -> Cameras:
    return orbit_cameras(1, res, res, elevation=15.0, distance=2.75, fovy=40.0, start_azimuth=az)


rows = []
for az in (0.0, 45.0, 90.0, 180.0):
    g = torch.Generator().manual_seed(0)
    im = ddim_sample(prior, ["a red ring"] * 4, steps=30, guidance_scale=7.5, cameras=Cameras.cat([camera(az)] * 4),
                     generator=g)
    rows.append(np.concatenate(list((im.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)), 1))
Image.fromarray(np.concatenate(rows, 0)).save(sys.argv[2])

with torch.no_grad():
    text = prior.encode_text(["a red ring"])
    x, t = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    out = [prior.predict(x, t, text.cond, camera(az)) for az in (0.0, 90.0)]
print(f"one UNet call at t=500, camera at 0° vs 90°: max |Δ| {(out[0] - out[1]).abs().max().item():.3f}, "
      f"mean |output| {out[0].abs().mean().item():.3f}")
