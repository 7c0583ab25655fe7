"""Multi-view diffusion in the way MVDream (Shi et al. 2023) extends Stable Diffusion, on diffusers' UNet.

Two changes turn a text-to-image ``UNet2DConditionModel`` into a V-view model, with no new layer types:

1. **Cross-view self-attention.** Every self-attention (``attn1``) of the transformer blocks attends over the tokens
   of all V views of a sample: hidden states [B·V, N, C] are regrouped to [B, V·N, C] before attention and split back
   after (:class:`MultiViewAttnProcessor`). The weights are those of ordinary self-attention.
2. **Camera embedding.** The flattened 4×4 camera-to-world matrix of each view (16 numbers, translation scaled to unit
   distance) goes through a 2-layer MLP whose output is added to the timestep embedding. diffusers' projection class
   embedding (``class_embed_type="projection"``, ``projection_class_embeddings_input_dim=16``) is exactly that MLP
   (Linear → SiLU → Linear, added to the time embedding), so we feed the camera as ``class_labels``.

The same two changes apply to a latent Stable Diffusion folder (``prior.type=stable-diffusion``): when its
``model_index.json`` says ``"views": 4`` the adapter installs the cross-view processor and feeds the cameras, which is
how a converted MVDream checkpoint is loaded (:class:`ViewSettings`).

Loading a converted MVDream checkpoint into this format (documented, not yet exercised with real weights):
* UNet weights: the standard SD (LDM) → diffusers key conversion; MVDream's ``attn1`` of each transformer block maps to
  diffusers' ``attn1`` unchanged (only the processor differs);
* ``camera_embed.0.{weight,bias}`` → ``class_embedding.linear_1.*``, ``camera_embed.2.*`` → ``class_embedding.linear_2.*``;
* cameras: MVDream flattens OpenGL-style (Blender) camera-to-world matrices; convert ours (OpenCV axes) by flipping
  the camera y and z axes (``c2w[:, :3, 1:3] *= -1``) and set ``model_index.json`` → ``"camera_convention":
  "opengl"``;
* ``model_index.json`` → ``"views": 4``, ``"class_condition": "camera"``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ..cameras import Cameras

CAMERA_DIM = 16
CLASS_CONDITIONS = ("pooled_text", "camera", "pooled_text+camera")
CONVENTIONS = ("opencv", "opengl")


@dataclass
class ViewSettings:
    """What a prior folder's ``model_index.json`` says about views and the class embedding.

    ``views``: images denoised jointly (1 = a single-view model); ``class_condition``: what the UNet's class embedding
    receives — "pooled_text" (token 0 of our conditioning), "camera" (MVDream) or "pooled_text+camera" — or None when
    the UNet has no class embedding; ``camera_convention``: axes of the c2w matrices the model was trained with.
    """

    views: int = 1
    class_condition: Optional[str] = None
    camera_convention: str = "opencv"

    @classmethod
    def from_folder(cls, folder: Optional[Path], unet, default_class: str = "pooled_text",
                    allowed: tuple[str, ...] = CLASS_CONDITIONS) -> "ViewSettings":
        from ..errors import DreamkitError

        index_file = Path(folder) / "model_index.json" if folder is not None else None
        index = json.loads(index_file.read_text()) if index_file is not None and index_file.is_file() else {}
        views = int(index.get("views", 1))
        has_class = unet.config.get("class_embed_type") is not None
        condition = index.get("class_condition", "camera" if views > 1 else default_class) if has_class else None
        if condition is not None and condition not in allowed:
            raise DreamkitError(f"{index_file}: class_condition {condition!r} is not supported here — expected one "
                                f"of {', '.join(allowed)}")
        convention = index.get("camera_convention", "opencv")
        if convention not in CONVENTIONS:
            raise DreamkitError(f"{index_file}: camera_convention {convention!r} — expected opencv or opengl")
        if views < 1:
            raise DreamkitError(f"{index_file}: views must be ≥ 1, got {views}")
        if views > 1:
            set_multiview_attention(unet, views)
        return cls(views, condition, convention)

    def check_batch(self, batch: int, cameras: Optional[Cameras]) -> None:
        needs_cameras = self.views > 1 or (self.class_condition or "").endswith("camera")
        if batch % self.views or (needs_cameras and (cameras is None or len(cameras) != batch)):
            raise ValueError(f"this multi-view prior denoises groups of {self.views} views: pass a batch of "
                             f"n·{self.views} images with one camera each (consecutive groups are one scene)")

    def class_labels(self, cond: torch.Tensor, cameras: Optional[Cameras], device, dtype) -> Optional[torch.Tensor]:
        """The class-embedding input for a batch (None when the UNet has no class embedding)."""
        if self.class_condition is None:
            return None
        parts = []
        if self.class_condition in ("pooled_text", "pooled_text+camera"):
            parts.append(cond[:, 0].to(device, dtype))
        if self.class_condition in ("camera", "pooled_text+camera"):
            parts.append(camera_features(cameras, self.camera_convention).to(device, dtype))
        return torch.cat(parts, dim=-1)


def camera_features(cameras: Cameras | torch.Tensor, convention: str = "opencv") -> torch.Tensor:
    """[B] cameras (or their c2w [B, 4, 4]) → [B, 16] flattened c2w with the translation scaled to unit length."""
    c2w = (cameras.c2w if isinstance(cameras, Cameras) else cameras).clone().float()
    if convention == "opengl":
        c2w[:, :3, 1:3] *= -1
    c2w[:, :3, 3] = c2w[:, :3, 3] / c2w[:, :3, 3].norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return c2w.reshape(-1, 16)


class MultiViewAttnProcessor:
    """Self-attention over the tokens of all ``views`` views of each sample (MVDream's 3D self-attention)."""

    def __init__(self, views: int):
        self.views = views

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("MultiViewAttnProcessor is for self-attention (attn1) only")
        residual = hidden_states
        spatial = hidden_states.dim() == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        bv, n, c = hidden_states.shape
        if bv % self.views:
            raise ValueError(f"batch {bv} is not a multiple of the {self.views} views")
        x = hidden_states.reshape(bv // self.views, self.views * n, c)  # [B, V·N, C]
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        heads = attn.heads
        head_dim = q.shape[-1] // heads
        q, k, v = (t.view(t.shape[0], -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(x.shape[0], -1, heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.reshape(bv, n, -1)
        if spatial:
            out = out.transpose(1, 2).reshape(bv, -1, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def set_multiview_attention(unet, views: int) -> None:
    """Install :class:`MultiViewAttnProcessor` on every ``attn1`` of ``unet`` (others keep their processor)."""
    processors = {}
    for name, proc in unet.attn_processors.items():
        processors[name] = MultiViewAttnProcessor(views) if name.endswith("attn1.processor") and views > 1 else proc
    unet.set_attn_processor(processors)
