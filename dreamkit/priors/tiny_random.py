"""A tiny, randomly initialised Stable Diffusion pipeline saved in the real diffusers folder format.

It goes through exactly the classes a real checkpoint uses (``UNet2DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel``, ``CLIPTokenizer``, ``DDIMScheduler``), so tests and the CLI exercise the production loading path
of :class:`dreamkit.priors.diffusers_sd.StableDiffusionPrior` in about a second and a few MB, offline.
Its predictions are noise: it checks plumbing (shapes, dtypes, gradients, conversions), never quality.

Layout written by :func:`build_tiny_sd` (what ``StableDiffusionPipeline.save_pretrained`` writes)::

    FOLDER/model_index.json
    FOLDER/unet/{config.json, diffusion_pytorch_model.safetensors}
    FOLDER/vae/{config.json, diffusion_pytorch_model.safetensors}
    FOLDER/text_encoder/{config.json, model.safetensors}
    FOLDER/tokenizer/{vocab.json, merges.txt, tokenizer_config.json, ...}
    FOLDER/scheduler/scheduler_config.json

:func:`build_sd21_random` writes the same layout with the *real* Stable Diffusion 2.1-base architecture (865.9 M
UNet, 83.7 M VAE, 340 M OpenCLIP ViT-H text encoder) and random weights, for speed and memory measurements
(``dreamkit bench --prior sd21-random``) on machines that cannot download the checkpoint. About 2.5 GB in fp16.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["build_tiny_sd", "build_tiny_t2v", "build_sd21_random", "ensure_sd21_random", "sd21_configs", "TINY_WORDS"]

#: Words that get whole-word tokens in the tiny tokenizer (any other text still tokenizes, byte by byte).
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "render", "object", "model", "view", "front", "side",
    "back", "overhead", "top", "left", "right", "red", "green", "blue", "yellow", "orange", "purple", "pink",
    "white", "black", "gray", "grey", "brown", "cube", "box", "sphere", "ball", "cone", "cylinder", "torus",
    "pyramid", "capsule", "chair", "table", "car", "tree", "house", "dog", "cat", "corgi", "bird", "horse",
    "mushroom", "apple", "cup", "lamp", "small", "large", "big", "shiny", "matte", "wooden", "metal", "stone",
    "rotating", "bouncing", "spinning", "moving", "walking", "dancing", "high", "quality", "detailed",
    "blurry", "low", "ugly", "bad", "dark", "bright",
)

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The byte-level BPE alphabet: byte b → one printable unicode character (the GPT-2 / CLIP convention).

    Printable Latin-1 bytes stand for themselves; the others (controls, space, …) are shifted past 255 so that
    every byte has a visible, non-whitespace symbol.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) \
        | set(range(ord("®"), ord("ÿ") + 1))
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _tiny_vocab_and_merges(words: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary learned on ``words``: 256 byte symbols, the same with the end-of-word mark
    ``</w>``, the merged symbols in merge order, then the two special tokens last.

    Merges are learned the BPE way (Sennrich et al. 2016): repeatedly merge the most frequent adjacent pair over
    all words (ties: first seen), until every word is one symbol. Because the tokenizer replays merges by rank,
    each listed word then encodes to a single token.
    """
    base = _byte_symbols()
    tokens: list[str] = base + [s + "</w>" for s in base]
    # ASCII words: each character is its own byte symbol; the last one carries the end-of-word mark.
    segmented = [list(w[:-1]) + [w[-1] + "</w>"] for w in dict.fromkeys(words) if w]
    merges: list[str] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in segmented:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(counts, key=counts.__getitem__)  # max keeps the first seen among equal counts
        merges.append(f"{best[0]} {best[1]}")
        tokens.append(best[0] + best[1])
        for k, symbols in enumerate(segmented):
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            segmented[k] = merged
    tokens += [_BOS, _EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _tiny_tokenizer(max_length: int):
    """A CLIPTokenizer over the tiny vocabulary, loaded the way any saved tokenizer is (from vocab.json and
    merges.txt), which works alike across transformers 4 and 5."""
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_vocab_and_merges(TINY_WORDS)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length)
    if len(tokenizer) != len(vocab):  # guard against a loader that silently ignored our files
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    return tokenizer


def _tiny_sd_parts(tokenizer, sample_size: int, max_length: int, prediction_type: str):
    """The tiny VAE (2 levels, scale factor 2, 4 latent channels), 2-layer CLIP text encoder of width 32 and DDIM
    scheduler (SD's scaled-linear β) that the tiny SD and text-to-video folders share; built after their UNet, from
    the global RNG as it stands."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=2 * sample_size,
        scaling_factor=0.18215,
    )
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return vae, text_encoder, scheduler


def build_tiny_sd(folder: Union[str, Path], prediction_type: str = "epsilon", seed: int = 0, *,
                  sample_size: int = 16, max_length: int = 77) -> Path:
    """Write a tiny random Stable Diffusion pipeline to ``folder`` (diffusers format) and return the folder.

    Args:
        folder: where to save; created if missing, files inside are overwritten.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (written to the scheduler config, as SD 2.x does).
        seed: seeds the random weights, so the same arguments give the same weights.
        sample_size: latent side of the UNet; the VAE downsamples by 2, so images are ``2·sample_size`` pixels.
        max_length: tokenizer ``model_max_length`` and text-encoder positions (77 as in CLIP).

    The parts: UNet (32, 64) channels with cross-attention at the low resolution (~0.6 M params), a 2-level VAE
    (scale factor 2, 4 latent channels), a 2-layer CLIP text encoder of width 32, a ~1k-token CLIP BPE tokenizer
    and a DDIM scheduler with SD's scaled-linear β schedule. About 5 MB on disk.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    folder = Path(folder).expanduser()
    tokenizer = _tiny_tokenizer(max_length)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae, text_encoder, scheduler = _tiny_sd_parts(tokenizer, sample_size, max_length, prediction_type)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(folder)
    return folder


def build_tiny_t2v(folder: Union[str, Path], frames: Optional[int] = 4, prediction_type: str = "epsilon",
                   seed: int = 0, *, sample_size: int = 8, max_length: int = 77) -> Path:
    """Write a tiny random text-to-video pipeline in the ModelScope / zeroscope layout (``TextToVideoSDPipeline``:
    a ``UNet3DConditionModel`` with temporal convolutions and temporal attention, the tiny VAE, CLIP text encoder,
    tokenizer and DDIM scheduler of :func:`build_tiny_sd`) with ``save_pretrained``, and return the folder.

    ``frames``: written to model_index.json as ``"frames"`` (what a dreamkit video folder carries; None leaves it
    out, as in a published ModelScope folder). Images are ``2·sample_size`` pixels. About 5 MB."""
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    folder = Path(folder).expanduser()
    tokenizer = _tiny_tokenizer(max_length)
    torch.manual_seed(seed)
    unet = UNet3DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    # the temporal convolutions' last layers start at zero (ModelScope's init): perturb them, so that frame order
    # matters to this random model as it does to a trained one
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "temp_convs" in name and "conv4" in name:
                param.normal_(0.0, 0.05)
    vae, text_encoder, scheduler = _tiny_sd_parts(tokenizer, sample_size, max_length, prediction_type)
    pipeline = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                     scheduler=scheduler)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(folder)
    if frames is not None:
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text())
        index["frames"] = int(frames)
        index_file.write_text(json.dumps(index, indent=2) + "\n")
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Stable Diffusion 2.1-base architecture with random weights (benchmarks only)

SD21_RANDOM_VERSION = 1
_SD21_MARKER = "dreamkit_random.json"


def sd21_configs(vocab_size: int = 49408, max_length: int = 77) -> dict[str, dict]:
    """Constructor arguments of the three networks of stabilityai/stable-diffusion-2-1-base (their config.json
    files): ``{"unet": UNet2DConditionModel kwargs, "vae": AutoencoderKL kwargs, "text": CLIPTextConfig kwargs,
    "scheduler": DDIMScheduler kwargs}``. Images are 512², latents 4 × 64².

    UNet: channels (320, 640, 1280, 1280), 2 layers per block, cross-attention in the first three levels with
    attention_head_dim (5, 10, 20, 20) (SD 2.x's per-level head counts), linear projections in the transformers,
    1024-d cross-attention. VAE: channels (128, 256, 512, 512), 4 latent channels, scaling 0.18215. Text: OpenCLIP
    ViT-H/14's text tower as CLIPTextModel, 1024 wide, 23 layers, 16 heads, GELU.
    """
    return {
        "unet": dict(
            sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
            freq_shift=0,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), dual_cross_attention=False,
            use_linear_projection=True, upcast_attention=False,
        ),
        "vae": dict(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu", latent_channels=4,
            norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
        ),
        "text": dict(
            vocab_size=vocab_size, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=max_length, hidden_act="gelu", layer_norm_eps=1e-5,
            projection_dim=512,
        ),
        "scheduler": dict(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
        ),
    }


def build_sd21_random(folder: Union[str, Path], seed: int = 0, device: Union[str, torch.device, None] = None,
                      dtype: torch.dtype = torch.float16, max_length: int = 77) -> Path:
    """Write a Stable Diffusion 2.1-base pipeline with random weights to ``folder`` (diffusers format).

    The networks are built on ``device`` (default: CUDA when available — random initialisation of 1.3 B parameters
    takes seconds there and minutes on a small CPU), cast to ``dtype`` and saved. The tokenizer is the tiny one of
    :func:`build_tiny_sd` (the real 49k-token vocabulary cannot be made offline); the text encoder keeps SD's 49408
    embeddings, so it has the real size. Predictions are noise: for timing and memory, never quality.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    folder = Path(folder).expanduser()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = _tiny_tokenizer(max_length)
    configs = sd21_configs(max_length=max_length)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **configs["text"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the cast warns about fp32-only modules; SD 2.1 has none
    try:
        for module in (unet, vae, text_encoder):
            module.to(device="cpu", dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**configs["scheduler"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(folder)
    (folder / _SD21_MARKER).write_text(json.dumps(
        {"architecture": "stable-diffusion-2-1-base", "weights": "random", "seed": seed, "dtype": str(dtype),
         "version": SD21_RANDOM_VERSION}, indent=2) + "\n")
    return folder


def ensure_sd21_random(folder: Union[str, Path], **kwargs) -> Path:
    """``folder`` if it already holds this version of :func:`build_sd21_random`'s output, else build it there."""
    folder = Path(folder).expanduser()
    marker = folder / _SD21_MARKER
    try:
        if json.loads(marker.read_text()).get("version") == SD21_RANDOM_VERSION:
            return folder
    except (OSError, ValueError):
        pass
    return build_sd21_random(folder, **kwargs)
