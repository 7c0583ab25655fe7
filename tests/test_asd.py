"""ASD (ScaleDreamer) against its formula, and recipe inheritance (gs_asd.yaml states only what differs)."""
import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.batch import Batch, Layout
from dreamkit.guidance.asd import ASDConfig, ASDGuidance
from dreamkit.guidance.sds import SDSConfig, SDSGuidance
from test_sds import AffinePrior


class TablePrior(AffinePrior):
    """AffinePrior with T = 1000 (ᾱ linear from 0.9999 to 0.001) for the Δt schedule."""

    def __init__(self):
        super().__init__()
        self.alphas_cumprod = torch.linspace(0.9999, 0.001, 1000)


def make(prior=None, **kw) -> ASDGuidance:
    cfg = OmegaConf.structured(ASDConfig(**kw))
    return ASDGuidance(cfg, prior or AffinePrior(), max_steps=100)


def test_asd_gradient_matches_hand_computation():
    """Δt fixed by hand: t = 2 with t_min = 0 (min_step_percent 0 → t_min = 1 after the clamp), plus_ratio 0.5,
    plus_random off → Δt = ⌊0.5·(2 − 1)⌋ = 0 … so use t = 1, T = 3: Δt ≤ T − 1 − t = 1; η(t − t_min) = 0.
    Instead check the general formula on AffinePrior with Δt computed from delta_t."""
    g = make(guidance_scale=3.0, plus_ratio=1.0, plus_random=False, min_step_percent=0.0, max_step_percent=1.0)
    prior = g.prior
    x = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]], requires_grad=True)
    noise = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    t = torch.tensor([1])   # ᾱ = 0.64; t_min = 1 → Δt = ⌊1·(1 − 1)⌋ = 0 … take t_min from the range
    t_min, _ = g.timestep_range(0)
    dt = int(g.delta_t(t, t_min)[0])
    assert dt == min(int(1.0 * (1 - t_min)), 3 - 1 - 1)
    out = g.distill(x, Batch(None, prior.encode_text(["p"])), step=0, t=t, noise=noise)
    out["loss_asd"].backward()
    abar = prior.alphas_cumprod
    tp = min(max(1 + dt, 1), 2)
    a, s = abar[1].sqrt().item(), (1 - abar[1]).sqrt().item()
    ap, sp = abar[tp].sqrt().item(), (1 - abar[tp]).sqrt().item()
    expected = []
    for xv, ev in zip([0.2, 0.4, 0.6, 0.8], [1.0, -1.0, 0.5, 0.0]):
        x_t, x_p = a * xv + s * ev, ap * xv + sp * ev
        eps_s = 0.2 * x_t + 3 * ((0.5 * x_t + 0.1) - 0.2 * x_t)   # ε̂_u + s(ε̂_c − ε̂_u)
        eps_p = 0.5 * x_p + 0.1                                     # conditional only, at t + Δt
        expected.append((1 - abar[1].item()) * (eps_s - eps_p))
    assert x.grad.flatten().tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("scale", [1.0, 3.0, 7.5])
def test_plus_ratio_zero_gives_w_times_s_minus_one_times_the_cfg_difference(scale):
    g = make(guidance_scale=scale, plus_ratio=0.0)
    prior = g.prior
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 2, 2, generator=gen, requires_grad=True)
    noise = torch.randn(3, 1, 2, 2, generator=gen)
    t = torch.tensor([1, 2, 1])  # t ≥ 1 as sampled (t + Δt is clamped to [1, T − 1])
    text = prior.encode_text(["p"] * 3)
    out = g.distill(x, Batch(None, text), step=0, t=t, noise=noise)
    out["loss_asd"].backward()
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x.detach() + (1 - abar).sqrt() * noise
    eps_c, eps_u = prior.predict(x_t, t, text.cond), prior.predict(x_t, t, text.uncond)
    expected = (1 - abar) * (scale - 1) * (eps_c - eps_u) / 3
    torch.testing.assert_close(x.grad, expected, atol=1e-6, rtol=1e-5)
    if scale == 1.0:
        assert x.grad.abs().max() < 1e-6
    assert float(out["asd_dt"]) == 0.0


@pytest.mark.parametrize("plus_random", [False, True])
def test_delta_t_stays_in_range_for_every_t(plus_random):
    g = make(TablePrior(), plus_ratio=0.1, plus_random=plus_random, min_step_percent=0.02, max_step_percent=0.98)
    n = 1000
    t_min, _ = g.timestep_range(0)
    t = torch.arange(0, n)
    gen = torch.Generator().manual_seed(1)
    dt = g.delta_t(t, t_min, gen)
    assert (dt >= 0).all() and (t + dt <= n - 1).all()
    upper = torch.minimum((0.1 * (t - t_min).double()).clamp_min(0), (n - 1 - t).double()).floor().long()
    assert (dt <= upper).all()
    assert (dt[t <= t_min] == 0).all()
    if not plus_random:
        assert torch.equal(dt, upper)  # Δt = ⌊0.1·(t − t_min)⌋, clamped to T − 1 − t
    else:
        assert (dt < upper).float()[upper > 5].mean() > 0.5  # u < 1 almost surely


def test_multiview_delta_t_is_shared_by_each_group():
    class MV(TablePrior):
        views = 4

    g = make(MV(), plus_ratio=0.1, plus_random=True)
    t = torch.tensor([500] * 4 + [800] * 4)
    dt = g.delta_t(t, 20, torch.Generator().manual_seed(0), Layout.of_prior(g.prior))
    assert len(set(dt[:4].tolist())) == 1 and len(set(dt[4:].tolist())) == 1


def test_asd_vanishes_at_a_data_point_of_the_oracle():
    """At x = R, the oracle's exact denoiser gives ε̂(x_t) = ε and ε̂(x_{t+Δt}) = ε (same ε), so g = 0 with s = 1."""
    from dreamkit.priors.oracle import OraclePrior
    from test_oracle import front_cameras

    prior = OraclePrior([{"mesh": "meshes/house.ply", "label": "a house"}], resolution=32)
    cams = front_cameras(2, size=32)
    images = prior.target_images(cams, "a house")
    g = make(prior, guidance_scale=1.0, plus_ratio=0.5, plus_random=False, weighting="uniform")
    x = images.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    out = g.distill(x, Batch(cams, prior.encode_text(["a house"] * 2)), step=0, t=torch.tensor([300, 700]),
                    generator=gen)
    out["loss_asd"].backward()
    assert float(out["asd_dt"]) > 0
    assert x.grad.abs().max() < 2e-3
    # SDS at the same point vanishes too (the reference the ASD property is stated against)
    sds = SDSGuidance(OmegaConf.structured(SDSConfig(guidance_scale=1.0, weighting="uniform")), prior, 100)
    x.grad = None
    sds.distill(x, Batch(cams, prior.encode_text(["a house"] * 2)), step=0, t=torch.tensor([300, 700]),
                generator=torch.Generator().manual_seed(0))["loss_sds"].backward()
    assert x.grad.abs().max() < 2e-3


def test_gs_asd_recipe_inherits_gs_sds32():
    from dreamkit.config import load_config

    asd, sds = load_config("gs_asd.yaml"), load_config("gs_sds32.yaml")
    assert asd.name == "gs_asd" and asd.guidance.name == "asd" and asd.guidance.plus_ratio == 0.1
    assert dict(asd.loss) == {"lambda_asd": 1.0}           # loss: replaces the base's section
    for section in ("representation", "camera", "prior", "background", "trainer", "export"):
        assert OmegaConf.to_container(asd[section]) == OmegaConf.to_container(sds[section]), section
    for key in ("guidance_scale", "min_step_percent", "max_step_percent", "weighting"):
        assert asd.guidance[key] == sds.guidance[key]


def test_recipe_inheritance_cycles_and_bad_bases_are_one_line(tmp_path):
    from dreamkit.config import load_config
    from dreamkit.errors import ConfigError

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\nname: a\n")
    b.write_text("base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(str(a))
    a.write_text("base: no_such_recipe.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: no_such_recipe.yaml"):
        load_config(str(a))


def test_a_recipe_that_swaps_the_guidance_keeps_only_the_keys_its_guidance_has(tmp_path):
    """gs_vsd.yaml takes its base's SDS keys that VSD also has; a composed recipe on the same base takes none of them
    (each member has its own guidance_scale), where a key-by-key merge would reject guidance.guidance_scale."""
    from dreamkit.config import load_config

    sds = load_config("gs_sds32.yaml")
    vsd = load_config("gs_vsd.yaml")
    assert vsd.guidance.name == "vsd" and vsd.guidance.max_step_percent == sds.guidance.max_step_percent
    recipe = tmp_path / "hybrid.yaml"
    recipe.write_text("base: gs_sds.yaml\nname: hybrid\nguidance:\n  name: composed\n  members:\n"
                      "    image: {probability: 0.6, guidance: {name: sds, guidance_scale: 7.0}}\n"
                      "    mv: {probability: 0.4, guidance: {name: sds}, prior: {type: pixel, name: tiny-mv},\n"
                      "         camera: {views: 4, width: 32, height: 32}}\n"
                      "loss: {lambda_image_sds: 1.0, lambda_mv_sds: 0.5}\n")
    cfg = load_config(str(recipe))
    assert set(cfg.guidance) == {"name", "members"}
    assert cfg.guidance.members.image.guidance.guidance_scale == 7.0
    assert cfg.guidance.members.mv.camera.width == 32 and cfg.camera.width == 64   # the member's camera over the base's
