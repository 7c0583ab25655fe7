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

3. **Optional: a per-pixel camera ray map** (``model_index.json`` → ``"camera_input": "plucker"``; not in
   MVDream, so a converted MVDream checkpoint leaves it out). Six channels, the Plücker coordinates (d, o×d) of each
   pixel's ray in world space, are concatenated to the noisy image before ``conv_in`` (``unet.config.in_channels`` =
   3 + 6), as camera-controlled diffusion models do (SPAD, Kant et al. 2024; CameraCtrl, He et al. 2024; CAT3D, Gao
   et al. 2024). The class embedding's camera is one vector added to the time embedding, a channel bias that says
   nothing about *where* in the image a world direction lies; a ray map says it at every pixel, which is what placing
   a front feature in the right view needs. The tiny multi-view prior learned to follow its cameras this way in 89
   CPU minutes, where the class-embedding camera alone had taught it almost nothing
   (``scripts/mv_camera_sensitivity.py``).
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
#: harmonics k = 1..TIME_HARMONICS of a video prior's frame-time embedding: [sin(2πkτ)…, cos(2πkτ)…]
TIME_HARMONICS = 4
TIME_DIM = 2 * TIME_HARMONICS
#: a video prior's frame-time features (``model_index.json`` → ``"time_input"``, see :func:`time_features`) and their
#: width: "harmonics" (periodic: τ = 0 and τ = 1 look alike) or "harmonics+ramp" (the harmonics and 2τ − 1, which
#: tells a clip's start from its end)
TIME_INPUTS = {"harmonics": TIME_DIM, "harmonics+ramp": TIME_DIM + 1}
CLASS_CONDITIONS = ("pooled_text", "camera", "pooled_text+camera", "pooled_text+time", "pooled_text+time+motion")
CONVENTIONS = ("opencv", "opengl")
CAMERA_INPUTS = ("plucker", "plucker_metric")
RAY_CHANNELS = 6
#: channels each camera_input adds to the UNet's input
CAMERA_INPUT_CHANNELS = {"plucker": RAY_CHANNELS, "plucker_metric": RAY_CHANNELS + 1}
#: a video prior's per-pixel frame input (``model_index.json`` → ``"frame_input"``): "time_map" appends 3 channels,
#: the pixel's x and y in [-1, 1] and the frame's 2τ − 1 (after any camera ray map); "cond_map" appends the time map
#: and the :data:`COND_MAP_CHANNELS` channels of a learned map of the class-embedding input (:class:`CondMap`)
FRAME_INPUTS = ("time_map", "cond_map")
#: channels of :class:`CondMap`'s output, its side before upsampling, and its hidden width
COND_MAP_CHANNELS, COND_MAP_SIZE, COND_MAP_HIDDEN = 4, 8, 128
FRAME_INPUT_CHANNELS = {"time_map": 3, "cond_map": 3 + COND_MAP_CHANNELS}
#: where a prior folder keeps a "cond_map" prior's map network (safetensors; see :func:`load_cond_map`)
COND_MAP_FILE = "cond_map/model.safetensors"
FRAME_ATTENTIONS = ("joint", "none")
CameraTensors = tuple[torch.Tensor, torch.Tensor]  # (c2w [B, 4, 4] OpenCV camera-to-world, fovy_deg [B])


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
    camera_input: Optional[str] = None
    #: frames per clip of a video prior (``model_index.json`` → ``"frames"``): the self-attention is joint over the
    #: ``views × frames`` images of a group, which share one timestep; 1 for image and multi-view priors
    frames: int = 1
    #: a video prior's per-pixel frame input (:data:`FRAME_INPUTS`; see :meth:`unet_input`), or None
    frame_input: Optional[str] = None
    #: the motions of a video prior whose class embedding takes the prompt's motion as a one-hot
    #: (class_condition "pooled_text+time+motion", ``model_index.json`` → ``"motions"``; see :func:`motion_token`),
    #: in one-hot order; None otherwise
    motions: Optional[tuple[str, ...]] = None
    #: how a video prior's frames see each other (``model_index.json`` → ``"frame_attention"``): "joint" (every
    #: self-attention over the tokens of all frames, as a multi-view prior's views) or "none" (each frame denoised on
    #: its own: its time and motion inputs alone place the object)
    frame_attention: str = "joint"
    #: a video prior's frame-time features (:data:`TIME_INPUTS`, ``model_index.json`` → ``"time_input"``)
    time_input: str = "harmonics"

    @classmethod
    def from_folder(cls, folder: Optional[Path], unet, default_class: str = "pooled_text",
                    allowed: tuple[str, ...] = CLASS_CONDITIONS) -> "ViewSettings":
        from ..errors import DreamkitError

        index_file = Path(folder) / "model_index.json" if folder is not None else None
        index = json.loads(index_file.read_text()) if index_file is not None and index_file.is_file() else {}
        views = int(index.get("views", 1))
        frames = int(index.get("frames", 1))
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
        if frames < 1:
            raise DreamkitError(f"{index_file}: frames must be ≥ 1, got {frames}")
        camera_input = index.get("camera_input")
        frame_input = index.get("frame_input")
        if camera_input is not None and camera_input not in CAMERA_INPUTS:
            raise DreamkitError(f"{index_file}: camera_input {camera_input!r} is not supported — expected "
                                f"{' or '.join(CAMERA_INPUTS)}, or leave the key out")
        if frame_input is not None and frame_input not in FRAME_INPUTS:
            raise DreamkitError(f"{index_file}: frame_input {frame_input!r} is not supported — expected "
                                f"{' or '.join(FRAME_INPUTS)}, or leave the key out")
        if camera_input is not None or frame_input is not None:
            extra = CAMERA_INPUT_CHANNELS.get(camera_input, 0) + FRAME_INPUT_CHANNELS.get(frame_input, 0)
            what = " and ".join(f"{k} {v!r}" for k, v in (("camera_input", camera_input),
                                                          ("frame_input", frame_input)) if v is not None)
            if unet.config.in_channels != unet.config.out_channels + extra:
                raise DreamkitError(f"{index_file}: {what} needs a UNet with "
                                    f"{extra} more input than output channels; this one has "
                                    f"in_channels={unet.config.in_channels}, out_channels={unet.config.out_channels}")
        time_input = index.get("time_input", "harmonics")
        if time_input not in TIME_INPUTS:
            raise DreamkitError(f"{index_file}: time_input {time_input!r} — expected "
                                f"{' or '.join(TIME_INPUTS)}, or leave the key out (harmonics)")
        motions = index.get("motions")
        if condition == "pooled_text+time+motion":
            if not (isinstance(motions, list) and motions and all(isinstance(m, str) for m in motions)):
                raise DreamkitError(f"{index_file}: class_condition 'pooled_text+time+motion' needs \"motions\": "
                                    "the list of motion names of its one-hot, in order")
            width = unet.config.get("projection_class_embeddings_input_dim")
            time_dim = TIME_INPUTS[time_input]
            if width is not None and width != int(unet.config.cross_attention_dim) + time_dim + len(motions):
                raise DreamkitError(f"{index_file}: {len(motions)} motions and time_input {time_input!r} do not fit "
                                    f"the UNet's class embedding input of {width}")
            motions = tuple(motions)
        else:
            motions = None
        frame_attention = index.get("frame_attention", "joint")
        if frame_attention not in FRAME_ATTENTIONS:
            raise DreamkitError(f"{index_file}: frame_attention {frame_attention!r} — expected "
                                f"{' or '.join(FRAME_ATTENTIONS)}")
        settings = cls(views, condition, convention, camera_input, frames, frame_input, motions, frame_attention,
                       time_input)
        settings.install_attention(unet)
        if frame_input == "cond_map":
            if folder is None or condition is None:
                raise DreamkitError(f"{index_file}: frame_input 'cond_map' needs a class embedding and the folder's "
                                    f"{COND_MAP_FILE}")
            attach_cond_map(unet, load_cond_map(Path(folder), int(unet.config.projection_class_embeddings_input_dim),
                                                cond_map_cross(condition, motions, time_input)))
        return settings

    @property
    def group(self) -> int:
        """Images denoised jointly: ``views × frames``."""
        return self.views * self.frames

    def install_attention(self, unet) -> None:
        """Joint self-attention over the ``group`` images (:func:`set_multiview_attention`) when they attend to
        each other: a multi-view prior's views always, a video prior's frames unless ``frame_attention`` is none."""
        if self.group > 1 and (self.views > 1 or self.frame_attention == "joint"):
            set_multiview_attention(unet, self.group)

    @property
    def needs_cameras(self) -> bool:
        """Whether every image must come with its camera (multi-view, a video prior's frame times, a camera class
        embedding or a ray map)."""
        parts = (self.class_condition or "").split("+")
        return (self.group > 1 or "camera" in parts or "time" in parts
                or self.camera_input is not None or self.frame_input is not None)

    def check_batch(self, batch: int, cameras: Optional[Cameras]) -> None:
        if batch % self.group or (self.needs_cameras and (cameras is None or len(cameras) != batch)):
            if self.frames > 1:
                raise ValueError(f"this video prior denoises clips of {self.frames} frames: pass a batch of "
                                 f"n·{self.group} images with one camera each (its time is the frame's time; "
                                 "consecutive frames are one clip)")
            raise ValueError(f"this multi-view prior denoises groups of {self.views} views: pass a batch of "
                             f"n·{self.views} images with one camera each (consecutive groups are one scene)")

    def check_timesteps(self, t: torch.Tensor) -> None:
        """A video prior was trained with one noise level per clip: ``t`` [B] must be constant within each group."""
        if self.frames > 1 and t.numel() > 1:
            groups = t.reshape(-1, self.group)
            if bool((groups != groups[:, :1]).any()):
                raise ValueError(f"this video prior denoises clips of {self.frames} frames with one timestep per "
                                 "clip: t differs within a clip (repeat each clip's t over its frames)")

    def class_labels(self, cond: torch.Tensor, cameras: "Cameras | CameraTensors | None", device,
                     dtype) -> Optional[torch.Tensor]:
        """The class-embedding input for a batch (None when the UNet has no class embedding).

        ``cameras``: our :class:`Cameras`, or a ``(c2w [B, 4, 4], fovy_deg [B])`` pair as the training script holds
        them — inference (both adapters) and training build the UNet's inputs here, so they cannot drift apart.
        """
        if self.class_condition is None:
            return None
        parts = []
        inputs = self.class_condition.split("+")
        if "pooled_text" in inputs:
            parts.append(cond[:, 0].to(device, dtype))
        if "time" in inputs:
            if cameras is None:
                raise ValueError(f"this video prior's class embedding takes each frame's time (class_condition "
                                 f"{self.class_condition!r}): pass one camera per image, its time set")
            parts.append(time_features(_camera_time(cameras).to(device), self.time_input).to(device, dtype))
        if "motion" in inputs:
            if self.motions is None or cond.shape[1] < 2:
                raise ValueError("this video prior's class embedding takes the prompt's motion: encode the text "
                                 "with the prior's encode_text (its last token is the motion one-hot)")
            parts.append(cond[:, -1, : len(self.motions)].to(device, dtype))
        if self.class_condition in ("camera", "pooled_text+camera"):
            if cameras is None:
                raise ValueError(f"this prior's class embedding takes the camera (class_condition "
                                 f"{self.class_condition!r}): pass one camera per image")
            c2w, _ = _camera_tensors(cameras)
            parts.append(camera_features(c2w.to(device), self.camera_convention).to(device, dtype))
        return torch.cat(parts, dim=-1)

    def text_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        """What the UNet's cross-attention sees of ``cond``: every token but a motion token (:func:`motion_token`),
        which only the class embedding reads — so a video prior started from the image prior attends to the same
        tokens as it, and begins as it exactly."""
        return cond[:, :-1] if self.motions is not None else cond

    def unet_input(self, x_t: torch.Tensor, cameras: "Cameras | CameraTensors | None", dtype,
                   labels: Optional[torch.Tensor] = None, unet=None) -> torch.Tensor:
        """What goes into ``conv_in``: the noisy image, with the ray map appended when ``camera_input`` says so and
        the frame input when ``frame_input`` does ("cond_map": also the map of ``labels``, the batch's
        :meth:`class_labels`, by ``unet``'s :class:`CondMap`).

        ``cameras`` as for :meth:`class_labels`.
        """
        x_t = x_t.to(dtype)
        if self.camera_input is None and self.frame_input is None:
            return x_t
        if cameras is None:
            raise ValueError(f"this prior takes a per-pixel {'camera ray map' if self.camera_input else 'time map'}: "
                             "pass one camera per image")
        parts = [x_t]
        if self.camera_input is not None:
            c2w, fovy = _camera_tensors(cameras)
            rays = plucker_rays(c2w.to(x_t.device), fovy.to(x_t.device), x_t.shape[-2], x_t.shape[-1],
                                metric=self.camera_input == "plucker_metric")
            parts.append(rays.to(dtype))
        if self.frame_input is not None:
            parts.append(time_map(_camera_time(cameras).to(x_t.device), x_t.shape[-2], x_t.shape[-1]).to(dtype))
        if self.frame_input == "cond_map":
            module = getattr(unet, CondMap.ATTRIBUTE, None)
            if labels is None or module is None:
                raise ValueError("this video prior's input includes a map of its class-embedding input "
                                 "(frame_input 'cond_map'): pass the class labels and the UNet that holds the map")
            parts.append(module(labels, x_t.shape[-2], x_t.shape[-1]).to(dtype))
        return torch.cat(parts, dim=1)


def _camera_tensors(cameras: "Cameras | CameraTensors") -> CameraTensors:
    return (cameras.c2w, cameras.fovy) if isinstance(cameras, Cameras) else tuple(cameras)[:2]


def _camera_time(cameras: "Cameras | tuple") -> torch.Tensor:
    """[B] frame times: ``Cameras.time``, or the third tensor of a ``(c2w, fovy, time)`` training tuple."""
    if isinstance(cameras, Cameras):
        return cameras.time
    if len(cameras) < 3:
        raise ValueError("a video prior needs each frame's time: pass Cameras or (c2w, fovy, time)")
    return cameras[2]


def motion_token(texts: "list[str]", motions: "tuple[str, ...]", dim: int) -> torch.Tensor:
    """[P] prompts → [P, 1, dim]: a token whose first ``len(motions)`` entries are the one-hot of each prompt's motion
    (the world's caption grammar, :func:`dreamkit.world.motion.split_motion_caption`: "a red cube moving left" →
    "moving left"; a caption without a motion phrase is "still"), zeros for the empty prompt (the unconditional
    branch of classifier-free guidance) and for a motion the prior was not trained on.

    Why: a frozen sentence encoder hardly separates the world's motions — the pooled all-MiniLM-L6-v2 vectors of
    "a red cube moving left" and "… moving right" have cosine 0.974 — so a tiny video prior conditioned on them drew
    both directions at once (``benchmarks/2026-12-05/tiny_video_probe_step1500``). The motion as its own one-hot in the
    class embedding (zero-initialised columns, like the frame time) says it without ambiguity; the tiny world's
    motions are a closed vocabulary, as its shapes and colours are."""
    from ..world.motion import split_motion_caption

    token = torch.zeros(len(texts), 1, dim)
    index = {m: i for i, m in enumerate(motions)}
    for row, text in enumerate(texts):
        if text.strip():
            name = split_motion_caption(text)[1].name
            if name in index:
                token[row, 0, index[name]] = 1.0
    return token


def time_map(tau: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B] frame times → [B, 3, H, W]: each pixel's x and y (pixel centres, −1 … 1, x to the right, y down) and the
    frame's 2τ − 1 — a video prior's per-pixel frame input (``frame_input: time_map``). The class embedding's time is
    one vector per frame, a channel bias that does not say *where* the object of "moving left" is at τ; with these
    channels a first layer can form ``a·x + b·τ`` (a moving edge) at every pixel, as the camera ray map taught
    tiny-mv where its views' fronts are."""
    b = tau.shape[0]
    ys = (torch.arange(height, device=tau.device, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=tau.device, dtype=torch.float32) + 0.5) / width * 2 - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    t = (2 * tau.float() - 1).view(b, 1, 1).expand(b, height, width)
    return torch.stack([grid_x.expand(b, height, width), grid_y.expand(b, height, width), t], dim=1)


class CondMap(torch.nn.Module):
    """A learned spatial map of the class-embedding input (``frame_input: cond_map``): Linear → SiLU → Linear to
    :data:`COND_MAP_CHANNELS` maps of :data:`COND_MAP_SIZE`², upsampled bilinearly to the image and appended to the
    UNet's input channels.

    Why: in a video prior the object's place in a frame depends on the product of the motion and the frame's time
    ("moving right" at τ = 0.9 is on the right, "moving left" at 0.9 on the left). The class embedding carries both but
    only as a per-channel bias, which cannot say where; the time map's x, y and τ channels can, but only through
    products a first convolution cannot form, so from zero their weights had no consistent gradient (averaged over
    left and right and early and late frames it cancels) and stayed near zero through 3000 steps of four fine-tunes
    (``benchmarks/2026-12-05/tiny_video_probe_step1500``). This MLP forms the products in its hidden layer and writes
    the result *at pixels*: its output gets a consistent gradient where the object should be. Its last layer starts at
    zero, so the map is exactly 0 and the prior starts as the image prior (``conv_in``'s weights for these channels
    start random, so that the map's gradient is not zero too). Stored beside the UNet in :data:`COND_MAP_FILE`."""

    #: the attribute of the UNet that holds the map network (so the training script's optimizer, EMA and checkpoint
    #: and VSD's trainable copy carry it with the UNet)
    ATTRIBUTE = "dreamkit_cond_map"

    def __init__(self, input_dim: int, channels: int = COND_MAP_CHANNELS, size: int = COND_MAP_SIZE,
                 hidden: int = COND_MAP_HIDDEN, cross: Optional[tuple[int, int]] = None):
        super().__init__()
        self.channels, self.size = channels, size
        #: (time features, motions): the input's last ``motions`` entries are a one-hot and the ``time`` before them
        #: the frame-time harmonics; their outer product is appended to the input (see :meth:`features`)
        self.cross = tuple(cross) if cross else None
        extra = self.cross[0] * self.cross[1] if self.cross else 0
        self.linear_1 = torch.nn.Linear(input_dim + extra, hidden)
        self.linear_2 = torch.nn.Linear(hidden, channels * size * size)
        torch.nn.init.zeros_(self.linear_2.weight)
        torch.nn.init.zeros_(self.linear_2.bias)

    def features(self, labels: torch.Tensor) -> torch.Tensor:
        """The hidden layer's input: ``labels``, and with ``cross`` the products motion_m · time_k of the one-hot and
        the time harmonics. Why the products: where "moving left" puts the object is odd in τ − ½ and opposite to
        "moving right", so an input column of the motion alone gets, summed over a clip's frames, a gradient that
        cancels (an XOR for the hidden layer to discover by chance); a product column's gradient does not cancel.
        Generic feature crosses (the network still learns what each motion does over time), not the motions' paths."""
        if not self.cross:
            return labels
        t, m = self.cross
        time, motion = labels[:, -(t + m): -m], labels[:, -m:]
        return torch.cat([labels, (motion[:, :, None] * time[:, None, :]).flatten(1)], dim=1)

    def forward(self, labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        w = self.linear_2.weight
        maps = self.linear_2(F.silu(self.linear_1(self.features(labels.to(w.dtype)))))
        maps = maps.view(-1, self.channels, self.size, self.size)
        if (height, width) != (self.size, self.size):
            maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        return maps


def cond_map_cross(class_condition: Optional[str], motions: Optional[tuple[str, ...]],
                   time_input: str = "harmonics") -> Optional[tuple[int, int]]:
    """A :class:`CondMap`'s ``cross`` for a class condition: (time harmonics, motions) when it has both."""
    if class_condition != "pooled_text+time+motion" or not motions:
        return None
    return time_input_dim(time_input), len(motions)


def attach_cond_map(unet, module: CondMap) -> None:
    """Make ``module`` a submodule of ``unet`` (:attr:`CondMap.ATTRIBUTE`), in the UNet's dtype, frozen like it when
    the UNet is frozen."""
    first = next(unet.parameters())
    module.to(device=first.device, dtype=first.dtype).requires_grad_(first.requires_grad)
    unet.add_module(CondMap.ATTRIBUTE, module)


def load_cond_map(folder: Path, input_dim: int, cross: Optional[tuple[int, int]] = None) -> CondMap:
    """The map network of a "cond_map" prior folder: tensors only (safetensors), through :func:`cond_map_from_state`;
    a missing or mismatched file is a DreamkitError naming it."""
    from safetensors.torch import load_file

    from ..errors import DreamkitError

    path = Path(folder) / COND_MAP_FILE
    if not path.is_file():
        raise DreamkitError(f"{folder}: frame_input 'cond_map' needs {COND_MAP_FILE} (the map network's weights)")
    return cond_map_from_state(load_file(str(path)), input_dim, cross, str(path))


def cond_map_from_state(state: dict, input_dim: int, cross: Optional[tuple[int, int]], source: str) -> CondMap:
    """A :class:`CondMap` holding ``state`` (its tensors), shapes checked against ``input_dim`` and the module's
    layout — with the motion × time products of ``cross`` when its first layer is that much wider (a map trained
    before the products had none). A mismatch is a DreamkitError naming ``source``."""
    from ..errors import DreamkitError

    width = tuple(state.get("linear_1.weight", torch.empty(0, 0)).shape[1:])
    crossed = cross is not None and width == (input_dim + cross[0] * cross[1],)
    module = CondMap(input_dim, cross=cross if crossed else None)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise DreamkitError(f"{source}: tensors {got} do not fit a map of a {input_dim}-wide class embedding "
                            f"(expected {expected})")
    module.load_state_dict(state)
    return module


def save_unet_folder(unet, folder: Path) -> None:
    """``unet`` as a plain diffusers folder ``folder/unet``, and the :class:`CondMap` it holds, if any, beside it
    (:data:`COND_MAP_FILE`, safetensors) — so the UNet folder loads anywhere a diffusers UNet does."""
    from safetensors.torch import save_file

    folder = Path(folder)
    cond_map = getattr(unet, CondMap.ATTRIBUTE, None)
    if cond_map is None:
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        return
    delattr(unet, CondMap.ATTRIBUTE)
    try:
        unet.save_pretrained(folder / "unet", safe_serialization=True)
    finally:
        unet.add_module(CondMap.ATTRIBUTE, cond_map)
    path = folder / COND_MAP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in cond_map.state_dict().items()}, str(path))


def time_input_dim(time_input: str) -> int:
    """The width of ``time_input``'s frame-time features (:data:`TIME_INPUTS`); ValueError naming the valid ones."""
    if time_input not in TIME_INPUTS:
        raise ValueError(f"time_input {time_input!r}: expected one of {', '.join(TIME_INPUTS)}")
    return TIME_INPUTS[time_input]


def time_features(tau: torch.Tensor, time_input: str = "harmonics") -> torch.Tensor:
    """[B] clip times τ → [B, 8] = [sin(2πkτ), k = 1..4, cos(2πkτ), k = 1..4], the frame-time input of a video
    prior's class embedding (GUIDANCE_4D.md §6.2), appended to the pooled text as the camera is for multi-view.

    ``time_input`` "harmonics+ramp" appends a ninth column, 2τ − 1. Why: the harmonics are periodic, so τ = 0 and
    τ = 1 get the same features, and a prior trained on clips that span [0, 1] is told the same thing at a motion's
    start and at its end ("moving left" on the right and on the left): tiny-video up to run j drew the object between
    the two there, and fits had to be shown times within [1/16, 15/16] only (losing 1/8 of every translation). The
    ramp is monotonic in τ, so the features of a clip's start and end differ."""
    time_input_dim(time_input)  # a known name
    tau = tau.float().reshape(-1, 1)
    k = torch.arange(1, TIME_HARMONICS + 1, device=tau.device, dtype=torch.float32)
    angle = 2 * torch.pi * tau * k
    parts = [torch.sin(angle), torch.cos(angle)]
    if time_input == "harmonics+ramp":
        parts.append(2 * tau - 1)
    return torch.cat(parts, dim=-1)


def grow_time_columns(weight: torch.Tensor, text_dim: int, old_time: int, new_time: int, motions: int,
                      cross: bool) -> torch.Tensor:
    """A Linear layer's weight [out, in] that reads a "pooled_text+time+motion" input laid out as [text, time
    (``old_time``), motion one-hot (``motions``)] — and, with ``cross`` (a :class:`CondMap`), the products
    motion_m · time_k after it, m-major — rewritten for ``new_time`` ≥ ``old_time`` time features: the old columns
    keep their weights at their new places and the new features' columns are zero, so the layer computes exactly what
    it did (how a prior with time_input "harmonics+ramp" starts from one with "harmonics")."""
    expected = text_dim + old_time + motions + (old_time * motions if cross else 0)
    if weight.shape[1] != expected or new_time < old_time:
        raise ValueError(f"a weight with {weight.shape[1]} input columns is not text {text_dim} + time {old_time} + "
                         f"{motions} motions{' + their products' if cross else ''} (= {expected})")
    rows = weight.shape[0]
    out = weight.new_zeros(rows, text_dim + new_time + motions + (new_time * motions if cross else 0))
    out[:, : text_dim + old_time] = weight[:, : text_dim + old_time]
    out[:, text_dim + new_time: text_dim + new_time + motions] = weight[:, text_dim + old_time: text_dim + old_time
                                                                       + motions]
    if cross:
        old = weight[:, text_dim + old_time + motions:].reshape(rows, motions, old_time)
        new = out[:, text_dim + new_time + motions:].view(rows, motions, new_time)
        new[:, :, :old_time] = old
    return out


def plucker_rays(c2w: torch.Tensor, fovy_deg: torch.Tensor, height: int, width: int,
                 metric: bool = False) -> torch.Tensor:
    """[B, 6, H, W] Plücker coordinates (d, o × d) of every pixel's ray, world frame, for OpenCV ``c2w`` [B, 4, 4]
    (with ``metric``: [B, 7, H, W], the moment's norm appended).

    Pinhole cameras with a centred principal point and square pixels, ``fovy_deg`` [B] the vertical field of view;
    ``d`` is the unit ray direction through the pixel centre and ``o`` the camera centre scaled to unit distance (as
    :func:`camera_features` scales it), so the map does not depend on the camera distance, only on where it looks
    from. With ``metric`` (``camera_input: plucker_metric``) ``o`` stays in scene units, so the moment's norm
    |o × d| is the distance at which the pixel's ray passes the world origin: whether a pixel can see an object of
    a given size at the origin, i.e. its apparent size at this distance and field of view, is written at every pixel
    (the camera-agnostic prior cannot tell a cube at 3.0 seen at 35° from a larger one at 2.5 seen at 45°). That norm
    is appended as a 7th channel: a first convolution, linear in its inputs, cannot form it from the moment's
    components, and a fine-tune given only those learned nothing from them (``conv_in``'s ray weights stayed at 2%
    of the image's after 3236 steps; the loss with shuffled cameras equalled the loss with the true ones).
    The axes convention does not matter here: rays are physical, computed from our OpenCV cameras.
    """
    c2w = c2w.float()
    b = c2w.shape[0]
    focal = 0.5 * height / torch.tan(torch.deg2rad(fovy_deg.float()) / 2)  # [B] pixels
    v, u = torch.meshgrid(torch.arange(height, device=c2w.device, dtype=torch.float32) + 0.5,
                          torch.arange(width, device=c2w.device, dtype=torch.float32) + 0.5, indexing="ij")
    x = (u - width / 2)[None] / focal[:, None, None]  # camera +x right, +y down, +z forward
    y = (v - height / 2)[None] / focal[:, None, None]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
    d = F.normalize(torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], dirs_cam), dim=-1)
    o = c2w[:, :3, 3] if metric else F.normalize(c2w[:, :3, 3], dim=-1)
    o = o[:, None, None].expand_as(d)
    m = torch.linalg.cross(o, d, dim=-1)
    parts = [d, m, m.norm(dim=-1, keepdim=True)] if metric else [d, m]
    out = torch.cat(parts, dim=-1).permute(0, 3, 1, 2)
    return out.reshape(b, out.shape[1], height, width)


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
