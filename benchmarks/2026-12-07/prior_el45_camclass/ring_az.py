import sys, torch, numpy as np
from PIL import Image
from omegaconf import OmegaConf
from dreamkit.cli import _prior_config_for
from dreamkit.priors.configs import build_prior
from dreamkit.priors.sampling import ddim_sample
from dreamkit.cameras import orbit_cameras, Cameras
prior = build_prior(_prior_config_for(sys.argv[1]), torch.device("cpu"))
print(getattr(prior, "view_settings", None))
rows = []
for az in (0.0, 45.0, 90.0, 180.0):
    cams = Cameras.cat([orbit_cameras(1, 64, 64, elevation=15.0, distance=2.75, fovy=40.0, start_azimuth=az)] * 4)
    g = torch.Generator().manual_seed(0)
    im = ddim_sample(prior, ["a red ring"] * 4, steps=30, guidance_scale=7.5, cameras=cams, generator=g)
    rows.append(np.concatenate(list((im.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)), 1))
Image.fromarray(np.concatenate(rows, 0)).save(sys.argv[2])
