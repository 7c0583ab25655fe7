"""Particles: N independent representations fitted in one run (ProlificDreamer's n_particles, Wang et al. 2023).

VSD treats the 3D asset as a random variable and fits a distribution of N particles θ_1 … θ_N; the particles interact
only through the guidance's trainable part (φ, fitted to all of their renders), which is what lets them spread over
the prior's modes instead of each collapsing to the same one. With SDS (no φ) the particles are N independent fits
that share nothing but the step's prior calls.

``particles: N`` at the top of a recipe builds N members from the same representation config (each initialised from
the next draws of the run's generator, so they start apart). Each step renders member i from its own
``camera.batch_size`` cameras (the batch holds N·batch_size images, particle-major), each member owns its optimizer
and its densification, and checkpoints hold every member. Exports and validation renders use one member,
``export.particle`` (0 by default).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..cameras import Cameras
from ..types import RenderOutput


def _cat(values: Sequence[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    if any(v is None for v in values):
        return None
    return torch.cat(list(values))


class Particles(nn.Module):
    """N members of one representation class; behaves as a representation whose batch is split among them."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 1:
            raise ValueError("Particles needs at least one member")
        self.members = nn.ModuleList(members)
        self.loss_names = tuple(getattr(members[0], "loss_names", ()))

    def __len__(self) -> int:
        return len(self.members)

    def _chunks(self, n: int) -> list[slice]:
        p = len(self.members)
        if n % p:
            raise ValueError(f"a batch of {n} cameras cannot be split among {p} particles")
        size = n // p
        return [slice(i * size, (i + 1) * size) for i in range(p)]

    def render(self, cameras: Cameras, background: Optional[torch.Tensor] = None, step: Optional[int] = None,
               **kwargs: Any) -> RenderOutput:
        """Member i renders the i-th of N equal, consecutive shares of the cameras (and backgrounds); the outputs are
        concatenated in that order and kept per member in ``extras["particles"]``."""
        outs = []
        for member, part in zip(self.members, self._chunks(len(cameras))):
            bg = background[part] if background is not None and background.dim() > 1 else background
            outs.append(member.render(cameras[part], background=bg, step=step, **kwargs))
        return RenderOutput(rgb=torch.cat([o.rgb for o in outs]), alpha=torch.cat([o.alpha for o in outs]),
                            depth=torch.cat([o.depth for o in outs]), normal=_cat([o.normal for o in outs]),
                            extras={"particles": outs})

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, torch.Tensor]:
        """Each member's regularizers on its own output, summed (a member's gradient is its own term's)."""
        total: dict[str, torch.Tensor] = {}
        for member, member_out in zip(self.members, out.extras["particles"]):
            for name, value in member.regularizers(member_out, step).items():
                total[name] = total[name] + value if name in total else value
        return total

    def post_steps(self, step: int, out: RenderOutput, optimizers: Sequence[Any], cameras: Cameras,
                   generator: Optional[torch.Generator] = None) -> dict:
        """Each member's post-step (densification) with its own output, cameras and optimizer; the info of member 0
        (and the total count of Gaussians where members have them)."""
        info: dict = {}
        for i, (member, member_out, optimizer, part) in enumerate(zip(
                self.members, out.extras["particles"], optimizers, self._chunks(len(cameras)))):
            member_info = member.post_step(step, member_out, optimizer, cameras[part], generator=generator) or {}
            if i == 0:
                info.update(member_info)
        return info

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def resize_to_state(self, state: dict[str, torch.Tensor]) -> None:
        """Reallocate each member's parameters to the shapes in ``state`` (keys relative to this module)."""
        for i, member in enumerate(self.members):
            prefix = f"members.{i}.params."
            if hasattr(member, "resize_to"):
                member.resize_to({k[len(prefix):]: v.shape for k, v in state.items() if k.startswith(prefix)})

    def extra_state_dict(self) -> dict:
        return {"members": [m.extra_state_dict() if hasattr(m, "extra_state_dict") else {} for m in self.members]}

    def load_extra_state_dict(self, state: dict) -> None:
        for member, extra in zip(self.members, state.get("members", [])):
            if hasattr(member, "load_extra_state_dict"):
                member.load_extra_state_dict(extra)

    @property
    def num_gaussians(self) -> int:
        """Gaussians in all members (an AttributeError, so ``hasattr`` is False, for members without them)."""
        if not hasattr(self.members[0], "num_gaussians"):
            raise AttributeError("num_gaussians")
        return sum(int(m.num_gaussians) for m in self.members)


def resize_to_state(rep: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Reallocate ``rep``'s parameters (densification changes their shapes) to those in ``state`` (a state_dict
    relative to the representation) before it is loaded."""
    if isinstance(rep, Particles):
        rep.resize_to_state(state)
    elif hasattr(rep, "resize_to"):
        prefix = "params."
        rep.resize_to({k[len(prefix):]: v.shape for k, v in state.items() if k.startswith(prefix)})
