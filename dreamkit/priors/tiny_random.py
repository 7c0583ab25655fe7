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
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Union

import torch

__all__ = ["build_tiny_sd", "TINY_WORDS"]

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
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

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
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(folder)
    return folder
