"""SDS gradient against the formula worked by hand on a 2×2 image."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.batch import Batch, Layout
from dreamkit.guidance.sds import SDSConfig, SDSGuidance
from dreamkit.priors.base import Prior
from dreamkit.types import TextCond


class AffinePrior(Prior):
    """ε̂(x_t) = a_c·x_t + b for the conditional branch (cond = 1), a_u·x_t for the unconditional (cond = 0)."""

    resolution = 2
    channels = 1

    def __init__(self):
        super().__init__()
        self.register_buffer("alphas_cumprod", torch.tensor([0.99, 0.64, 0.36]))

    def encode_text(self, prompts, negative=None):
        n = len(prompts)
        return TextCond(torch.ones(n, 1), torch.zeros(n, 1), list(prompts))

    def encode(self, images):  # identity: x = image (one channel)
        return images

    def predict(self, x_t, t, cond, cameras=None):
        c = cond.view(-1, 1, 1, 1)
        return c * (0.5 * x_t + 0.1) + (1 - c) * (0.2 * x_t)


def make(weighting="sds", scale=3.0, clip=0.0):
    cfg = OmegaConf.structured(SDSConfig(guidance_scale=scale, weighting=weighting, grad_clip=clip))
    return SDSGuidance(cfg, AffinePrior(), max_steps=100)


def test_sds_gradient_matches_hand_computation():
    guidance = make()
    x = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]], requires_grad=True)
    noise = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    t = torch.tensor([1])  # ᾱ = 0.64 → α = 0.8, σ = 0.6
    out = guidance.distill(x, Batch(None, guidance.prior.encode_text(["p"])), step=0, t=t, noise=noise)
    out["loss_sds"].backward()
    # by hand: x_t = 0.8·x + 0.6·ε; ε̂_c = 0.5·x_t + 0.1; ε̂_u = 0.2·x_t; ε̂ = ε̂_u + 3(ε̂_c − ε̂_u) = 1.1·x_t + 0.3
    # w = 1 − ᾱ = 0.36; grad = w·(ε̂ − ε); B = 1
    expected = []
    for xv, ev in zip([0.2, 0.4, 0.6, 0.8], [1.0, -1.0, 0.5, 0.0]):
        x_t = 0.8 * xv + 0.6 * ev
        eps_hat = 1.1 * x_t + 0.3
        expected.append(0.36 * (eps_hat - ev))
    assert x.grad.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    # the logged value is ½‖g‖²/B
    assert out["loss_sds"].item() == pytest.approx(0.5 * sum(g * g for g in expected), abs=1e-6)


def test_batch_average_and_weightings():
    x = torch.full((2, 1, 2, 2), 0.5, requires_grad=True)
    noise = torch.zeros_like(x)
    t = torch.tensor([2, 2])  # ᾱ = 0.36 → α = 0.6, σ = 0.8
    for weighting, w in (("uniform", 1.0), ("sds", 0.64), ("fantasia3d", 0.6 * 0.64)):
        x.grad = None
        g = make(weighting, scale=1.0)
        g.distill(x, Batch(None, g.prior.encode_text(["p", "p"])), 0, t=t, noise=noise)["loss_sds"].backward()
        # scale 1 → conditional only: ε̂ = 0.5·(0.6·0.5) + 0.1 = 0.25; gradient divided by B = 2
        assert x.grad.flatten().tolist() == pytest.approx([w * 0.25 / 2] * 8, abs=1e-6)


def test_grad_clip_clamps_elements():
    g = make("uniform", scale=1.0, clip=0.05)
    x = torch.full((1, 1, 2, 2), 0.5, requires_grad=True)
    g.distill(x, Batch(None, g.prior.encode_text(["p"])), 0, t=torch.tensor([2]), noise=torch.zeros_like(x))["loss_sds"].backward()
    assert x.grad.abs().max().item() == pytest.approx(0.05)


def test_timestep_annealing():
    cfg = OmegaConf.structured(SDSConfig(min_step_percent=0.2, max_step_percent=0.8, t_anneal="linear"))

    class P(AffinePrior):
        def __init__(self):
            super().__init__()
            self.alphas_cumprod = torch.linspace(0.999, 0.01, 1000)

    g = SDSGuidance(cfg, P(), max_steps=100)
    assert g.sample_timesteps(1, 0, None, torch.device("cpu")).item() == 800
    assert g.sample_timesteps(1, 50, None, torch.device("cpu")).item() == 500
    assert g.sample_timesteps(1, 100, None, torch.device("cpu")).item() == 200
    g.cfg.t_anneal = "sqrt"  # HiFA: t_max − (t_max − t_min)·sqrt(step / max_steps)
    assert g.sample_timesteps(1, 25, None, torch.device("cpu")).item() == round(800 - 600 * math.sqrt(0.25))
    g.cfg.t_anneal = "random"
    t = g.sample_timesteps(4096, 0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.min() >= 200 and t.max() <= 800 and t.float().std() > 100


def test_multiview_prior_gets_one_timestep_per_group_of_views():
    """A V-view prior denoises V consecutive images jointly and was trained with one noise level per group."""
    class MultiView(AffinePrior):
        views = 4

        def __init__(self):
            super().__init__()
            self.alphas_cumprod = torch.linspace(0.999, 0.01, 1000)

    g = SDSGuidance(OmegaConf.structured(SDSConfig()), MultiView(), max_steps=100)
    t = g.sample_timesteps(32, 0, torch.Generator().manual_seed(0), torch.device("cpu"), Layout.of_prior(g.prior)).view(8, 4)
    assert (t == t[:, :1]).all() and t[:, 0].unique().numel() > 1
    single = SDSGuidance(OmegaConf.structured(SDSConfig()), MultiView.__bases__[0](), max_steps=100)
    single.prior.alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
    t = single.sample_timesteps(32, 0, torch.Generator().manual_seed(0), torch.device("cpu"),
                              Layout.of_prior(single.prior)).view(8, 4)
    assert not (t == t[:, :1]).all()
