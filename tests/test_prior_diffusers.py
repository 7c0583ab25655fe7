"""StableDiffusionPrior on the tiny random diffusers pipeline: loading, errors, shapes, gradients, v-prediction,
text cache and classifier-free guidance. All offline, CPU, a few seconds."""
from __future__ import annotations

import time
import uuid

import pytest
import torch

from dreamkit.errors import DreamkitError
from dreamkit.priors.base import Prior
from dreamkit.priors.diffusers_sd import StableDiffusionPrior
from dreamkit.priors.tiny_random import build_tiny_sd
from dreamkit.types import TextCond


@pytest.fixture(scope="module")
def prior(tiny_sd_dir) -> StableDiffusionPrior:
    return StableDiffusionPrior(str(tiny_sd_dir))


@pytest.fixture(scope="module")
def tiny_sd_v_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd_v"), prediction_type="v_prediction", seed=1)


def _unique(text: str) -> str:
    """A prompt nobody has encoded yet in this process (the text cache is shared by all instances)."""
    return f"{text} {uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------------- loading
def test_tiny_pipeline_is_a_real_diffusers_folder(tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_sd_dir / sub).is_dir()
    assert (tiny_sd_dir / "model_index.json").is_file()
    size = sum(f.stat().st_size for f in tiny_sd_dir.rglob("*") if f.is_file())
    assert size < 10 * 2 ** 20
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    assert pipe.tokenizer.model_max_length == 77
    # Words of the tiny vocabulary are single tokens: <bos> corgi <eos>.
    assert len(pipe.tokenizer("corgi").input_ids) == 3


def test_build_is_deterministic(tmp_path, tiny_sd_dir):
    again = build_tiny_sd(tmp_path / "again")
    name = "unet/diffusion_pytorch_model.safetensors"
    assert (again / name).read_bytes() == (tiny_sd_dir / name).read_bytes()


def test_load_from_folder(prior, tiny_sd_dir):
    assert isinstance(prior, Prior)
    assert prior.latent and prior.channels == 4
    assert prior.vae_scale_factor == 2 and prior.resolution == 32  # sample_size 16 × 2
    assert prior.prediction_type == "epsilon"
    assert prior.alphas_cumprod.shape == (1000,) and prior.alphas_cumprod.dtype == torch.float32
    assert prior.num_train_timesteps == 1000
    assert torch.all(prior.alphas_cumprod[1:] < prior.alphas_cumprod[:-1])
    assert prior.dtype == torch.float32  # "auto" on the CPU
    assert not any(p.requires_grad for p in prior.parameters())
    prior.train()  # an enclosing system switching to train mode must not wake the frozen parts
    assert not prior.unet.training and not prior.vae.training and not prior.text_encoder.training


def test_missing_folder_is_a_user_error(tmp_path):
    missing = tmp_path / "no_such_prior"
    with pytest.raises(DreamkitError) as info:
        StableDiffusionPrior(str(missing))
    message = str(info.value)
    assert str(missing) in message and "prior.name=" in message and "\n" not in message


def test_folder_that_is_not_a_pipeline_is_a_user_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(DreamkitError, match="missing vae/"):
        StableDiffusionPrior(str(tmp_path))


def test_unreachable_hub_id_fails_fast_with_download_hint():
    name = f"dreamkit-tests/not-cached-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    with pytest.raises(DreamkitError) as info:
        StableDiffusionPrior(name)
    assert time.perf_counter() - start < 20
    message = str(info.value)
    assert name in message and "prior.name=" in message and "\n" not in message
    if "no such model" not in message:  # on a machine with network the hub answers 404 instead
        assert f"download {name} --local-dir" in message


def test_local_files_only_never_touches_the_network():
    name = f"dreamkit-tests/not-cached-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    with pytest.raises(DreamkitError, match="--local-dir DIR"):
        StableDiffusionPrior(name, local_files_only=True)
    assert time.perf_counter() - start < 5


def test_unknown_dtype_is_a_user_error(tiny_sd_dir):
    with pytest.raises(DreamkitError, match="prior.dtype"):
        StableDiffusionPrior(str(tiny_sd_dir), dtype="int8")


# ------------------------------------------------------------------------------------------------ shapes
def test_encode_text_shapes_and_default_negative(prior):
    text = prior.encode_text(["a red cube", "a blue sphere"])
    assert isinstance(text, TextCond) and text.prompts == ["a red cube", "a blue sphere"]
    assert text.cond.shape == (2, 77, 32) and text.uncond.shape == (2, 77, 32)
    assert torch.equal(text.uncond[0], text.uncond[1])  # both "" by default
    assert not torch.allclose(text.cond[0], text.cond[1])
    empty = prior.encode_text(["a red cube"], negative=[""])
    assert torch.equal(empty.uncond[0], text.uncond[0])
    other = prior.encode_text(["a red cube"], negative=["blurry"])
    assert not torch.allclose(other.uncond[0], text.uncond[0])


def test_encode_decode_predict_shapes(prior):
    images = torch.rand(2, 3, 48, 40)  # any size: resized to the prior's resolution (32)
    latents = prior.encode(images)
    assert latents.shape == (2, 4, 16, 16)
    decoded = prior.decode(latents)
    assert decoded.shape == (2, 3, 32, 32) and decoded.dtype == torch.float32
    assert decoded.min() >= 0 and decoded.max() <= 1
    text = prior.encode_text(["a dog"] * 2)
    eps = prior.predict(latents, torch.tensor([20, 900]), text.cond)
    assert eps.shape == latents.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    # A scalar timestep broadcasts over the batch.
    assert torch.allclose(prior.predict(latents, torch.tensor(500), text.cond),
                          prior.predict(latents, torch.tensor([500, 500]), text.cond))


def test_encode_with_generator_is_reproducible(prior):
    images = torch.rand(1, 3, 32, 32)
    a = prior.encode(images, generator=torch.Generator().manual_seed(3))
    b = prior.encode(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_gradient_flows_from_latents_to_images(prior):
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    latents = prior.encode(images)
    latents.square().mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())


def test_gradient_flows_through_predict_to_the_input(prior):
    # Methods that backpropagate through the UNet (e.g. for x_t) must get gradients; the weights stay frozen.
    x_t = torch.randn(1, 4, 16, 16, requires_grad=True)
    prior.predict(x_t, torch.tensor([300]), prior.encode_text(["a cat"]).cond).sum().backward()
    assert x_t.grad is not None and x_t.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ v-prediction
def test_v_prediction_is_converted_to_epsilon(tiny_sd_v_dir):
    prior = StableDiffusionPrior(str(tiny_sd_v_dir))
    assert prior.prediction_type == "v_prediction"
    torch.manual_seed(0)
    x_t = torch.randn(3, 4, 16, 16)
    t = torch.tensor([1, 400, 999])
    cond = prior.encode_text(["a red cube"] * 3).cond
    eps = prior.predict(x_t, t, cond)
    with torch.no_grad():
        v = prior.unet(x_t, t, encoder_hidden_states=cond).sample
    alpha_bar = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * x_t
    assert torch.allclose(eps, expected, atol=1e-5)
    assert not torch.allclose(eps, v, atol=1e-3)


def test_v_conversion_recovers_the_true_noise(tiny_sd_v_dir):
    """With the exact v of a known (x0, ε), the conversion must return that ε (independent of the network)."""
    prior = StableDiffusionPrior(str(tiny_sd_v_dir))
    x0, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    t = torch.tensor([50, 700])
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v_true = a.sqrt() * noise - (1 - a).sqrt() * x0

    class ExactV(torch.nn.Module):
        dtype = torch.float32

        def forward(self, sample, timestep, encoder_hidden_states):
            return type("Out", (), {"sample": v_true})()

    prior.unet = ExactV()
    assert torch.allclose(prior.predict(x_t, t, torch.zeros(2, 77, 32)), noise, atol=1e-5)


# ------------------------------------------------------------------------------------------------ text cache, CFG
def test_text_cache_skips_the_encoder_for_known_prompts(prior):
    calls = []
    handle = prior.text_encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        prompt, negative = _unique("a red cube"), _unique("blurry")
        first = prior.encode_text([prompt, prompt], negative=[negative])
        assert calls == [1, 1]  # one batched call for the prompt (deduplicated), one for the negative
        second = prior.encode_text([prompt], negative=[negative])
        assert calls == [1, 1]  # all cached: the encoder did not run
        assert torch.equal(second.cond[0], first.cond[0]) and torch.equal(second.uncond[0], first.uncond[0])
        # Another instance of the same model shares the cache.
        other = StableDiffusionPrior(prior.name)
        other.text_encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
        other.encode_text([prompt], negative=[negative])
        assert calls == [1, 1]
    finally:
        handle.remove()


def test_text_cache_is_per_model(prior, tiny_sd_v_dir):
    v_prior = StableDiffusionPrior(str(tiny_sd_v_dir))  # different weights (seed 1)
    prompt = _unique("a dog")
    assert not torch.allclose(prior.encode_text([prompt]).cond, v_prior.encode_text([prompt]).cond)


def test_predict_cfg_matches_the_manual_combination(prior):
    torch.manual_seed(1)
    x_t = torch.randn(2, 4, 16, 16)
    t = torch.tensor([100, 800])
    text = prior.encode_text(["a red cube", "a blue sphere"], negative=["blurry"])
    scale = 7.5
    guided = prior.predict_cfg(x_t, t, text, scale)
    eps_c = prior.predict(x_t, t, text.cond)
    eps_u = prior.predict(x_t, t, text.uncond)
    assert torch.allclose(guided, eps_u + scale * (eps_c - eps_u), atol=1e-4)


def test_channels_last_changes_the_layout_not_the_numbers(tiny_sd_dir, prior):
    """prior.channels_last (the default) stores the UNet and VAE in NHWC; against the same weights in the standard
    layout, predictions, latents, decodes and the gradient that reaches the images agree to float rounding."""
    plain = StableDiffusionPrior(str(tiny_sd_dir), channels_last=False)
    assert prior.channels_last and not plain.channels_last
    conv = next(m for m in prior.unet.modules() if isinstance(m, torch.nn.Conv2d))
    conv_plain = next(m for m in plain.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape[-1] > 1
    assert not conv_plain.weight.is_contiguous(memory_format=torch.channels_last)
    vae_conv = next(m for m in prior.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert vae_conv.weight.is_contiguous(memory_format=torch.channels_last)

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, prior.resolution, prior.resolution, generator=g)
    grads = []
    for p in (prior, plain):
        x = images.clone().requires_grad_(True)
        z = p.encode(x, generator=torch.Generator().manual_seed(1))
        (z * torch.linspace(-1, 1, z.numel()).view_as(z)).sum().backward()
        grads.append((z.detach(), x.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-4)
    x_t = torch.randn(2, prior.channels, prior.resolution // prior.vae_scale_factor,
                      prior.resolution // prior.vae_scale_factor, generator=g)
    cond = prior.encode_text(["a red cube", "a blue sphere"]).cond
    torch.testing.assert_close(prior.predict(x_t, torch.tensor([10, 900]), cond),
                               plain.predict(x_t, torch.tensor([10, 900]), cond), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(prior.decode(x_t), plain.decode(x_t), atol=1e-5, rtol=1e-4)
