"""What a prior's denoiser makes of the truth: mean x̂₀ (CFG 10, 16 noise draws) of a world scene's renders.

    python scripts/x0_at_truth.py PRIOR OUT.png ["a red cube"]

Renders the scene at 8 cameras (elevation −10…60 and −30, azimuth 0…280, distance 2.75, fovy 40; random lights as
the world's data), then for t = 100, 300, 500, 700, 900 adds noise and averages the classifier-free-guided x̂₀ over
16 draws. Rows: the renders, then one row per t. Used to ask whether a camera-aware prior asks for a part that a fit
grows (call 3's stem: it does not; benchmarks/2026-12-05/red_cube_size_prior/).
"""
import sys, torch, numpy as np, imageio.v3 as iio
from dreamkit.config import CameraConfig
from dreamkit.priors.pixel import PixelDiffusionPrior
from dreamkit.world.captions import parse_prompt
from dreamkit.world.dataset import DEFAULT_BACKGROUND, render_scene_views, sample_lights, sample_training_cameras
from dreamkit.cameras import cameras_from_spherical
prior_name, out = sys.argv[1], sys.argv[2]
prompt = sys.argv[3] if len(sys.argv) > 3 else "a red cube"
torch.manual_seed(0)
prior = PixelDiffusionPrior(prior_name, warn_outside_world=False); prior.requires_grad_(False)
res = prior.resolution
el = torch.tensor([-10., 0, 15, 30, 45, 45, 60, -30]); az = torch.tensor([0., 40, 80, 120, 160, 200, 240, 280])
cams = cameras_from_spherical(el, az, torch.full((8,), 2.75), torch.full((8,), 40.), res, res)
gen = torch.Generator().manual_seed(0)
lights = sample_lights(8, gen)
scene = parse_prompt(prompt)
rgb, _, _ = render_scene_views(scene, cams, background=DEFAULT_BACKGROUND, lights=lights, ssaa=4)
x = rgb.permute(0, 3, 1, 2).contiguous()
xe = prior.encode(x)
text = prior.encode_text([prompt])
rows = [x]
K = 16
for t in [100, 300, 500, 700, 900]:
    acc = 0
    for k in range(K):
        noise = torch.randn(xe.shape, generator=gen)
        tt = torch.full((8,), t)
        abar = prior.alphas_cumprod[tt].view(-1, 1, 1, 1)
        xt = abar.sqrt() * xe + (1 - abar).sqrt() * noise
        cond = text.select(torch.zeros(8, dtype=torch.long))
        eps = prior.predict_cfg(xt, tt, cond, 10.0, cams)
        x0 = (xt - (1 - abar).sqrt() * eps) / abar.sqrt()
        acc = acc + x0
    rows.append(prior.decode(acc / K) if hasattr(prior, 'decode') else acc / K)
img = torch.cat([torch.cat(list(r.clamp(0, 1)), -1) for r in rows], -2)
img = torch.nn.functional.interpolate(img[None], scale_factor=3, mode='nearest')[0]
iio.imwrite(out, (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
