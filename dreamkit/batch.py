"""What one training step is about: a :class:`Batch` of cameras with its :class:`Layout` and conditioning, drawn by a
:class:`BatchSampler`.

The layout says how the B images of a step are grouped: V views × F frames per group (group size V·F, group-major:
image ``g·V·F + v·F + f`` is view v, frame f of group g). A multi-view prior denoises each group's V views jointly
and a video prior its F frames, and both were trained with one noise level per group, so the guidance draws one
timestep per group from the layout (never from the prior). Single-image priors use V = F = 1.

The sampler draws everything on the host from one CPU generator (saved in checkpoints): the cameras (groups of V
views 360°/V apart in azimuth, as MVDream) and the prompt component's conditioning index per camera. The system
moves the result to the device in one asynchronous copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .cameras import CameraSampler, Cameras
from .schedule import range_at
from .types import TextCond


@dataclass(frozen=True)
class Layout:
    """V views × F frames per group; with P particles the batch is P equal, consecutive blocks of groups, one per
    particle (``dreamkit.representations.particles``)."""

    views: int = 1
    frames: int = 1
    particles: int = 1

    def __post_init__(self) -> None:
        if self.views < 1 or self.frames < 1 or self.particles < 1:
            raise ValueError(f"a layout needs views, frames and particles ≥ 1, got {self.views}×{self.frames}, "
                             f"{self.particles} particle(s)")

    @property
    def group_size(self) -> int:
        return self.views * self.frames

    def groups(self, batch: int) -> int:
        """How many groups a batch of ``batch`` images holds (raises when it is not a whole number)."""
        if batch % self.group_size:
            raise ValueError(f"a batch of {batch} images is not a whole number of groups of {self.views} view(s) × "
                             f"{self.frames} frame(s)")
        return batch // self.group_size

    def per_image(self, per_group: torch.Tensor) -> torch.Tensor:
        """[G, ...] values, one per group → [G·V·F, ...], repeated for each image of its group."""
        return per_group.repeat_interleave(self.group_size, dim=0)

    @classmethod
    def of_prior(cls, prior: Any) -> "Layout":
        """The layout a prior denoises jointly (its ``views`` and ``frames``); for tensor-level calls that were given
        no batch."""
        return cls(int(getattr(prior, "views", 1) or 1), int(getattr(prior, "frames", 1) or 1))


@dataclass
class Shard:
    """This rank's part of a batch shared by several processes (``trainer.devices`` > 1; dreamkit.distributed): the
    positions ``index`` [b] of its images in the whole batch of ``size`` images, and the generator that every rank
    holds in the same state, from which the whole batch's timesteps and noise are drawn before each rank keeps its
    rows, so that the ranks together draw what one process would."""

    index: torch.Tensor
    size: int
    generator: Optional[torch.Generator]


@dataclass
class Batch:
    """One step's cameras [B] (their ``time`` are the frames' times), the text variant of each image, the layout."""

    cameras: Cameras
    text: TextCond
    layout: Layout = field(default_factory=Layout)
    #: [B] index of each camera's prompt variant (device), None with a single variant
    prompt_index: Optional[torch.Tensor] = None
    #: the layout's per-region prompts (K of them, in the order of the recipe's boxes), None without a layout
    regions: Optional[TextCond] = None
    #: this rank's part of the whole batch when one fit runs in several processes; None in a one-process fit
    shard: Optional[Shard] = None
    #: composed guidance: the index of this step's member (its prior, layout and loss), None otherwise
    member: Optional[int] = None

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def times(self) -> torch.Tensor:
        return self.cameras.time


@dataclass
class HostBatch:
    """The host-side draw of a batch: cameras, the prompt-variant index (before the copy to the device) and the text
    of each camera's variant (for losses that build prompts of their own, e.g. SDS-Bridge)."""

    cameras: Cameras
    prompt_index: Optional[torch.Tensor]
    prompts: list = field(default_factory=list)


class BatchSampler:
    """Draws the cameras of each step from the ``camera`` config section (ranges may be schedules of the step) in the
    layout's groups, and asks the prompt component which text variant each camera gets."""

    def __init__(self, camera_cfg: Any, layout: Layout, generator: torch.Generator, prompts: Any = None):
        """``camera_cfg.batch_size`` cameras per particle (``layout.particles`` × that in all)."""
        if int(camera_cfg.batch_size) % layout.group_size:
            from .errors import ConfigError

            raise ConfigError(f"camera.batch_size={camera_cfg.batch_size} must be a multiple of the group size "
                              f"{layout.group_size} ({layout.views} view(s) × {layout.frames} frame(s))")
        self.cfg = camera_cfg
        self.layout = layout
        self.cameras = CameraSampler(generator)
        self.prompts = prompts

    def sample_cameras(self, step: int) -> Cameras:
        cam = self.cfg
        return self.cameras.sample(
            int(cam.batch_size) * self.layout.particles, int(cam.width), int(cam.height),
            elevation_range=range_at(cam.elevation_range, step, "camera.elevation_range"),
            azimuth_range=range_at(cam.azimuth_range, step, "camera.azimuth_range"),
            distance_range=range_at(cam.distance_range, step, "camera.distance_range"),
            fovy_range=range_at(cam.fovy_range, step, "camera.fovy_range"),
            uniform_sphere=bool(cam.uniform_sphere),
            time_range=range_at(getattr(cam, "time_range", [0.0, 0.0]), step, "camera.time_range"),
            views=self.layout.views,
            frames=self.layout.frames,
            azimuth_step=float(getattr(cam, "clip_azimuth_step", 0.0)),
        )

    def sample(self, step: int) -> HostBatch:
        cameras = self.sample_cameras(step)
        index = self.prompts.variant_index(cameras) if self.prompts is not None else None
        text = self.prompts.prompts_for(index, len(cameras)) if self.prompts is not None else []
        return HostBatch(cameras, index, text)
