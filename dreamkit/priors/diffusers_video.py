"""Text-to-video diffusion (ModelScope / zeroscope layout) as a :class:`~dreamkit.priors.base.Prior` over clips.

A folder in the layout diffusers' ``TextToVideoSDPipeline.save_pretrained`` writes — ``unet/`` (a
``UNet3DConditionModel``), ``vae/`` (``AutoencoderKL``, applied frame by frame), ``text_encoder/`` + ``tokenizer/``
(CLIP), ``scheduler/`` — is loaded part by part with the same code as the Stable Diffusion adapter
(:class:`~dreamkit.priors.diffusers_sd.StableDiffusionPrior`, whose text encoding, latent encode/decode, dtype and
ε/v conversions it inherits). Weights are read by diffusers/transformers (safetensors); no code from the folder runs.

Clips: the prior denoises clips of F = ``frames`` frames, consecutive in the batch (clip-major, as
``dreamkit.batch.Layout`` lays out ``camera.frames``). ``predict`` takes latents x_t [n·F, 4, h, w], one timestep
per clip (repeated over its frames) and one text per clip, and calls the UNet on [n, 4, F, h, w] — the layout of
``TextToVideoSDPipeline`` — then returns ε̂ [n·F, 4, h, w]. The UNet has no camera or time input (ModelScope has
none): frame order is what its temporal layers see.

F comes from ``prior.frames`` or, when that is 0, from the folder's ``model_index.json`` → ``"frames"`` (the key a
dreamkit video folder carries, as ``"views"`` for multi-view); a ModelScope / zeroscope folder as published has
neither, so it asks for ``prior.frames`` (they were trained on 16 and 24 frames).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, Optional, Union

import torch

from ..cameras import Cameras
from ..errors import DreamkitError
from .base import epsilon_from_output
from .diffusers_sd import StableDiffusionPrior, _looks_like_path

__all__ = ["TextToVideoPrior"]


class TextToVideoPrior(StableDiffusionPrior):
    """A frozen ModelScope-layout text-to-video model (``UNet3DConditionModel``) as a latent video prior.

    Args (as :class:`StableDiffusionPrior`, plus): frames: F, the frames of a clip (0: from ``model_index.json``).
    ``channels_last`` is off: the UNet's weights are 5-D (3-D convolutions), which have no channels-last layout.
    """

    unet_class: ClassVar[str] = "UNet3DConditionModel"
    safetensors_only: ClassVar[bool] = True

    def __init__(self, name: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                 dtype: Union[str, torch.dtype] = "auto", local_files_only: Optional[bool] = None,
                 frames: int = 0, cuda_graph: Union[bool, str] = "auto") -> None:
        self._frames_asked = int(frames)
        folder = Path(os.fspath(name)).expanduser()
        if _looks_like_path(os.fspath(name)) and folder.is_dir():
            for sub in ("unet", "vae", "text_encoder"):
                if (folder / sub).is_dir() and not list((folder / sub).glob("*.safetensors")):
                    raise DreamkitError(f"{name}: {sub}/ has no .safetensors weights — dreamkit loads a "
                                        "text-to-video folder from safetensors only (a pickled .bin can run code); "
                                        "convert it (diffusers' save_pretrained writes safetensors)")
        super().__init__(name, device=device, dtype=dtype, local_files_only=local_files_only,
                         channels_last=False, cuda_graph=cuda_graph)

    def _view_settings(self, name: str):
        from .multiview import ViewSettings

        index = {}
        folder = Path(os.fspath(name)).expanduser() if _looks_like_path(os.fspath(name)) else None
        if folder is not None and (folder / "model_index.json").is_file():
            index = json.loads((folder / "model_index.json").read_text())
        if self._frames_asked < 0:
            raise DreamkitError(f"prior.frames={self._frames_asked} — use the frames per clip the model was "
                                "trained on (e.g. 16), or 0 to read them from model_index.json")
        frames = self._frames_asked or int(index.get("frames", 0))
        if frames < 1:
            raise DreamkitError(f"{name}: how many frames a clip has is not in its model_index.json (\"frames\") — "
                                "set prior.frames=F, the frames it was trained on (ModelScope 16, zeroscope 24)")
        if int(index.get("views", 1)) != 1:
            raise DreamkitError(f"{name}: a multi-view text-to-video folder (views={index['views']}) is not "
                                "supported")
        return ViewSettings(views=1, class_condition=None, frames=frames)

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "TextToVideoPrior":
        """From a validated ``prior`` section (``configs.TextToVideoPriorConfig``)."""
        return cls(cfg.name, device=str(device), dtype=cfg.dtype, local_files_only=cfg.local_files_only,
                   frames=int(cfg.frames), cuda_graph=cfg.cuda_graph)

    def _unet_forward(self, x_in: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, *labels: torch.Tensor):
        return self.unet(x_in, t, encoder_hidden_states=cond).sample

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                cameras: Optional[Cameras] = None, network: Optional[torch.nn.Module] = None,
                timestep_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ε̂ [n·F, 4, h, w] float32 for clips x_t [n·F, 4, h, w] (clip-major), t [n·F] (one per clip) or a scalar,
        cond [n·F, T, D] (one text per clip). ``cameras`` are not used (the UNet has no camera input)."""
        if network is not None or timestep_cond is not None:
            raise ValueError("a text-to-video prior runs its own UNet only (no trainable copy: VSD's φ needs an "
                             "image prior)")
        frames = self.frames
        b = x_t.shape[0]
        if x_t.dim() != 4 or b % frames:
            raise ValueError(f"this text-to-video prior denoises clips of {frames} frames: pass latents "
                             f"[n·{frames}, C, h, w] (consecutive frames are one clip), got {tuple(x_t.shape)}")
        n = b // frames
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(b) if t.dim() == 0 else t
        self.view_settings.check_timesteps(t)
        per_clip = cond.reshape(n, frames, *cond.shape[1:])
        if not torch.equal(per_clip, per_clip[:, :1].expand_as(per_clip)):
            raise ValueError("a text-to-video prior takes one text per clip: the frames of a clip have different "
                             "conditioning (view-dependent prompts with a turning camera?)")
        dtype = self.dtype
        c, h, w = x_t.shape[1:]
        sample = x_t.to(dtype).reshape(n, frames, c, h, w).transpose(1, 2).contiguous()  # [n, C, F, h, w]
        out = self._denoiser(self._unet_forward, sample, t.reshape(n, frames)[:, 0].contiguous(),
                             per_clip[:, 0].to(dtype).contiguous())
        out = out.transpose(1, 2).reshape(b, c, h, w).float()
        return epsilon_from_output(out, x_t, t, self.alphas_cumprod, self.prediction_type)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", frames={self.frames}"
