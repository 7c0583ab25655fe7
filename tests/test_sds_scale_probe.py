"""scripts/sds_scale_probe.py against a known answer: with the oracle prior of one target, ε̂ − ε = α_t·(x − R)/σ_t
exactly, so the SDS gradient vanishes at the target's own render and points back to it on either side — the probe
must find dE/ds < 0 below scale 1, 0 at 1, > 0 above, and a preferred scale of 1."""
import pytest
import torch

from dreamkit.cameras import CameraSampler
from dreamkit.guidance.sds import SDSConfig, SDSGuidance
from dreamkit.priors.oracle import OraclePrior
from dreamkit.render.raster import render_mesh_colors
from dreamkit.world.scenes import single_scene


def test_probe_finds_the_oracle_target_size(tmp_path, load_script):
    probe = load_script("sds_scale_probe")
    mesh = single_scene("cube", "red").export(tmp_path / "cube.ply")
    prior = OraclePrior([{"mesh": str(mesh), "label": "a red cube"}], resolution=24, background=(0.9, 0.9, 0.9))
    guidance = SDSGuidance(SDSConfig(guidance_scale=5.0, min_step_percent=0.02, max_step_percent=0.98), prior,
                           max_steps=1)
    gen = torch.Generator().manual_seed(0)
    n = 8
    cams = CameraSampler(gen).sample(n, 24, 24, elevation_range=(-10, 45), azimuth_range=(-180, 180),
                                     distance_range=(2.5, 3.0), fovy_range=(35, 45))
    t = guidance.sample_timesteps(n, 0, gen, torch.device("cpu"))
    noise = torch.randn(n, 3, 24, 24, generator=gen)
    text = prior.encode_text(["a red cube"])
    verts, faces, colours = prior.target_mesh(0)

    def render(s):   # the oracle's own renderer and shading: at s = 1 the images are its targets exactly
        rgb, _, _ = render_mesh_colors(verts * s, faces, cams, face_colors=colours, background=prior.background,
                                       ssaa=prior.ssaa, **prior.shading)
        return rgb.permute(0, 3, 1, 2).contiguous()

    rows = probe.scale_curve(guidance, text, render, cams, t, noise, [0.8, 1.0, 1.25], chunk=4)
    below, at, above = (r["dE_ds"] for r in rows)
    assert below < 0 < above
    assert abs(at) < 1e-4 * min(-below, above)
    assert probe.preferred_scale(rows) == pytest.approx(1.0, abs=1e-3)
    # and the crossing logic on a made-up curve: zero between 1.1 and 1.2, a quarter of the way
    curve = [{"scale": 1.0, "dE_ds": -3.0}, {"scale": 1.1, "dE_ds": -1.0}, {"scale": 1.2, "dE_ds": 3.0}]
    assert probe.preferred_scale(curve) == pytest.approx(1.125)
    assert probe.preferred_scale(curve[:2]) is None
