"""Particles: N representations in one run, each fitted as if alone (SDS) or sharing VSD's φ."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.batch import Batch, Layout
from dreamkit.cameras import cameras_from_spherical
from dreamkit.errors import ConfigError
from dreamkit.representations.particles import Particles


def _gaussians(seed: int):
    from dreamkit.config import load_config
    from dreamkit.components import build_representation

    cfg = load_config("gs_oracle.yaml", ["representation.num_points=200"])
    return build_representation(cfg, torch.Generator().manual_seed(seed))


def _cams(n: int, size: int = 24):
    az = torch.linspace(-150, 150, n)
    return cameras_from_spherical(torch.full((n,), 15.0), az, torch.full((n,), 2.7), torch.full((n,), 40.0),
                                  size, size)


def test_each_particle_gets_the_gradient_it_would_get_alone():
    """Two particles, each a copy of one model, each with its own 2 cameras: member i's gradient equals the model's
    gradient when fitted alone on those cameras (the distillation loss is a mean over one particle's images)."""
    from dreamkit.guidance.sds import SDSConfig, SDSGuidance
    from test_sds import AffinePrior

    single = _gaussians(0)
    particles = Particles([copy.deepcopy(single), _gaussians(1)])
    cams = _cams(4)
    bg = torch.ones(4, 3)
    g = SDSGuidance(OmegaConf.structured(SDSConfig(guidance_scale=1.0)), AffinePrior(), max_steps=10)
    t = torch.tensor([1, 2, 2, 1])
    out = particles.render(cams, background=bg)
    assert out.rgb.shape[0] == 4 and len(out.extras["particles"]) == 2
    x_shape = g.prior.encode(out.rgb.permute(0, 3, 1, 2)).shape
    noise = torch.randn(x_shape, generator=torch.Generator().manual_seed(0))
    text = g.prior.encode_text(["p"] * 4)
    g(out, Batch(cams, text, Layout(particles=2)), 0, t=t, noise=noise)["loss_sds"].backward()
    alone = single.render(cams[0:2], background=bg[:2])
    g(alone, Batch(cams[0:2], g.prior.encode_text(["p"] * 2)), 0, t=t[:2], noise=noise[:2])["loss_sds"].backward()
    member = dict(particles.members[0].named_parameters())
    for name, param in single.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name
        torch.testing.assert_close(member[name].grad, param.grad, rtol=1e-5, atol=1e-7, msg=name)
    # the second member moved by its own renders only
    assert all(p.grad is not None for p in particles.members[1].parameters())


def test_particles_must_split_the_batch_evenly():
    with pytest.raises(ValueError, match="cannot be split among 2 particles"):
        Particles([_gaussians(0), _gaussians(1)]).render(_cams(3), background=torch.ones(3, 3))


def test_particle_settings_are_checked():
    from dreamkit.config import load_config

    with pytest.raises(ConfigError, match="particles must be > 0"):
        load_config("gs_oracle.yaml", ["particles=0"])
    with pytest.raises(ConfigError, match="export.particle=2 — this recipe has 2 particle"):
        load_config("gs_oracle.yaml", ["particles=2", "export.particle=2"])


def test_a_particles_run_trains_checkpoints_and_exports_each_member(tmp_path):
    """gs_oracle with 2 particles: one optimizer and one densification per member, both members in the checkpoint,
    exports from export.particle."""
    from dreamkit.checkpoint import load_checkpoint
    from dreamkit.cli import main
    from dreamkit.components import load_representation_from_checkpoint
    from dreamkit.run import load_run

    assert main(["fit", "--config", "gs_oracle.yaml", "particles=2", "trainer.max_steps=12",
                 "representation.num_points=300", "camera.width=32", "camera.height=32", "prior.resolution=32",
                 "representation.densify.refine_start=4", "representation.densify.refine_every=4",
                 "trainer.val_every=0", "trainer.progress=false", "export.formats=[ply]", "export.turntable=false",
                 f"output_dir={tmp_path}"]) == 0
    (run,) = [p for p in (tmp_path / "gs_oracle").iterdir() if not p.is_symlink()]
    ckpt = load_checkpoint(run / "ckpts" / "last.ckpt")
    assert len(ckpt["optimizer_states"]) == 2
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("representation.members.0.") for k in keys)
    assert any(k.startswith("representation.members.1.") for k in keys)
    _, cfg, path = load_run(run)
    both = load_representation_from_checkpoint(cfg, path, torch.device("cpu"), all_particles=True)
    assert isinstance(both, Particles) and len(both) == 2
    # the members were fitted apart: different sizes after their own densification, or different parameters
    a, b = (m.params["means"] for m in both.members)
    assert a.shape != b.shape or not torch.equal(a, b)
    first = load_representation_from_checkpoint(cfg, path, torch.device("cpu"))
    assert torch.equal(first.params["means"], both.members[0].params["means"])
    from plyfile import PlyData

    ply = PlyData.read(str(run / "exports" / "gaussians.ply"))
    assert len(ply["vertex"].data) == both.members[0].num_gaussians
    assert main(["export", str(run), "--format", "ply", "--output", str(tmp_path / "p1"), "export.particle=1"]) == 0
    ply1 = PlyData.read(str(tmp_path / "p1" / "gaussians.ply"))
    assert len(ply1["vertex"].data) == both.members[1].num_gaussians
