"""Adaptive density control of 3D Gaussians as a separate strategy object with explicit state.

The rules follow 3D Gaussian Splatting (Kerbl et al. 2023, §5.2) — clone small Gaussians and split large ones where
the view-space positional gradient is large, prune transparent and oversized ones, reset opacities periodically — in
the shape gsplat gave them (a strategy object that edits parameters *and* their optimizer state). With
``revised_opacity`` the Gaussians that a clone or split leaves take the opacity 1 − √(1 − o) of Bulò et al. 2024
("Revising Densification in Gaussian Splatting"), so that the two composite to the original one's o where they
overlap instead of 1 − (1 − o)²: densification then adds detail without adding coverage.
"""
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn


@dataclass
class DensifyConfig:
    enabled: bool = True
    #: the registered densification strategy (``dreamkit list``): adc (3DGS adaptive density control)
    strategy: str = "adc"
    #: steps [refine_start, refine_stop) refine every refine_every steps
    refine_start: int = 100
    refine_stop: int = 1000
    refine_every: int = 100
    #: reset opacities every N steps (0 = never)
    reset_every: int = 0
    #: grow where the mean view-space gradient norm (NDC units, as 3DGS) exceeds this
    grow_grad2d: float = 0.0002
    #: clone if max scale ≤ grow_scale3d · scene_scale, else split in two
    grow_scale3d: float = 0.01
    #: prune if opacity < prune_opa
    prune_opa: float = 0.005
    #: prune if max scale > prune_scale3d · scene_scale
    prune_scale3d: float = 0.1
    #: never grow beyond this many Gaussians
    max_gaussians: int = 20000
    #: extent of the scene used to make the scale thresholds relative
    scene_scale: float = 1.0
    #: both Gaussians of a clone or split get opacity 1 − √(1 − o) (Bulò et al. 2024), so densifying does not make
    #: the covered region more opaque (and, under SDS, larger); False = 3DGS's copies of o
    revised_opacity: bool = False


def _distributed() -> bool:
    """A process group of more than one rank is running (dreamkit.distributed)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _replace_param(optimizer: Optional[torch.optim.Optimizer], params: nn.ParameterDict, name: str,
                   new_value: torch.Tensor, state_fn: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Swap ``params[name]`` for a new Parameter and carry its optimizer state through ``state_fn``."""
    old = params[name]
    new = nn.Parameter(new_value.detach().clone(), requires_grad=old.requires_grad)
    if optimizer is not None:
        for group in optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                if p is old:
                    state = optimizer.state.pop(old, None)
                    group["params"][i] = new
                    if state:
                        optimizer.state[new] = {
                            k: (state_fn(k, v) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in state.items()
                        }
    params[name] = new


class DensifyStrategy:
    """State: running sums of view-space gradient norms and visibility counts per Gaussian. It edits the model's
    parameters and the state of the one optimizer it is given, the representation's own (never another
    component's)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.grad2d: Optional[torch.Tensor] = None
        self.count: Optional[torch.Tensor] = None
        self._grad_scale_cache: Optional[tuple] = None  # a derived constant, not state

    # -- state for checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"grad2d": self.grad2d, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.grad2d = state.get("grad2d")
        self.count = state.get("count")

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _grad_scale(self, width: int, height: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        """[2] (W/2·B, H/2·B), made on the device (no host-to-device copy) once per image size and batch."""
        key = (width, height, batch, like.device, like.dtype)
        cached = self._grad_scale_cache
        if cached is None or cached[0] != key:
            scale = torch.stack([torch.full((), width / 2.0 * batch, device=like.device, dtype=like.dtype),
                                 torch.full((), height / 2.0 * batch, device=like.device, dtype=like.dtype)])
            cached = self._grad_scale_cache = (key, scale)
        return cached[1]

    def _accumulate(self, means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int,
                    exact: bool = False) -> None:
        """means2d.grad [B, N, 2] (pixels) → accumulate per-Gaussian NDC gradient norms where visible. ``exact``:
        the sums over the images in float64 (``trainer.exact_batch_sum``: the same numbers however the batch is split
        over processes)."""
        grad = means2d.grad
        if grad is None:
            return
        n = grad.shape[-2]
        batch = grad.shape[0]
        # pixel → NDC units, and undo the 1/B of a batch-averaged loss (as gsplat's DefaultStrategy)
        norms = (grad * self._grad_scale(width, height, batch, grad)).norm(dim=-1)  # [B, N]
        visible = radii > 0
        if self.grad2d is None or self.grad2d.shape[0] != n:
            self.grad2d = torch.zeros(n, device=grad.device)
            self.count = torch.zeros(n, device=grad.device)
        if exact:
            from ..distributed import all_reduce_sum

            stats = all_reduce_sum(torch.stack([(norms * visible).double().sum(0), visible.double().sum(0)]))
            self.grad2d += stats[0].to(self.grad2d.dtype)
            self.count += stats[1].to(self.count.dtype)
            return
        if _distributed():
            # one fit in several processes: each rank saw its share of the batch's images; the sums over all of
            # them make every rank's statistics (and so its clone/split/prune decisions) the same
            from ..distributed import all_reduce_sum

            stats = all_reduce_sum(torch.stack([(norms * visible).sum(0), visible.sum(0).to(norms.dtype)]))
            self.grad2d += stats[0]
            self.count += stats[1].to(self.count.dtype)
            return
        self.grad2d += (norms * visible).sum(0)
        self.count += visible.sum(0).to(self.count.dtype)

    @torch.no_grad()
    def step_post_backward(self, model: Any, optimizer: Optional[torch.optim.Optimizer], step: int,
                           extras: dict, width: int, height: int, generator: Optional[torch.Generator]) -> dict:
        """Call after ``backward`` and the optimizer step. Returns counts of what changed (for logging)."""
        cfg = self.cfg
        info = {}
        if not cfg.enabled or step >= cfg.refine_stop:
            return info
        means2d = extras.get("means2d")
        if means2d is not None:
            self._accumulate(means2d, extras["radii"], width, height, exact=bool(extras.get("exact_sum")))
        if step >= cfg.refine_start and step % cfg.refine_every == 0 and step > 0:
            info.update(self._grow(model, optimizer, generator))
            info.update(self._prune(model, optimizer, step))
            self.grad2d = None
            self.count = None
        if cfg.reset_every > 0 and step > 0 and step % cfg.reset_every == 0:
            self._reset_opacity(model, optimizer)
            info["reset"] = 1
        return info

    # -- operations -----------------------------------------------------------------------------------------------
    def _grow(self, model: Any, optimizer, generator) -> dict:
        cfg = self.cfg
        if self.grad2d is None:
            return {}
        avg = self.grad2d / self.count.clamp_min(1)
        candidates = avg > cfg.grow_grad2d
        max_scale = model.scales.max(dim=-1).values
        small = max_scale <= cfg.grow_scale3d * cfg.scene_scale
        clone = candidates & small
        split = candidates & ~small
        budget = cfg.max_gaussians - model.num_gaussians
        if budget <= 0:
            return {"cloned": 0, "split": 0}
        # respect the budget: keep the strongest candidates (each clone adds one, each split adds one)
        total = int(clone.sum() + split.sum())
        if total > budget:
            score = torch.where(clone | split, avg, torch.full_like(avg, -1.0))
            keep = torch.zeros_like(clone)
            keep[torch.topk(score, budget).indices] = True
            clone &= keep
            split &= keep
        n_clone, n_split = int(clone.sum()), int(split.sum())
        if cfg.revised_opacity and (n_clone or n_split):
            # before copying: the clone's original keeps its place and gets the revised opacity as well
            self._revise_opacity(model, clone | split)
        if n_clone:
            self._append(model, optimizer, {k: v[clone] for k, v in model.params.items()})
            split = torch.cat([split, torch.zeros(n_clone, dtype=torch.bool, device=split.device)])
        if n_split:
            self._split(model, optimizer, split, generator)
        return {"cloned": n_clone, "split": n_split}

    @staticmethod
    def _revise_opacity(model: Any, mask: torch.Tensor) -> None:
        """o → 1 − √(1 − o) where ``mask`` (Bulò et al. 2024): two such copies composite to o. In place (called
        under no_grad): the parameter and its optimizer state stay as they are."""
        logits = model.params["opacity_logits"]
        logits[mask] = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(logits[mask])), eps=1e-6)

    def _append(self, model: Any, optimizer, new: dict) -> None:
        for name, value in new.items():
            extra = value.shape[0]
            _replace_param(
                optimizer, model.params, name, torch.cat([model.params[name], value]),
                lambda k, v, extra=extra: torch.cat([v, torch.zeros((extra, *v.shape[1:]), dtype=v.dtype,
                                                                    device=v.device)]),
            )

    def _remove(self, model: Any, optimizer, mask: torch.Tensor) -> None:
        keep = ~mask
        for name in list(model.params.keys()):
            _replace_param(optimizer, model.params, name, model.params[name][keep], lambda k, v: v[keep])

    def _split(self, model: Any, optimizer, mask: torch.Tensor, generator) -> None:
        """Replace each selected Gaussian by two drawn from it, scales divided by 1.6 (3DGS)."""
        params = model.params
        scales = model.scales[mask]  # activated [M, 3]
        rotmats = quat_to_rotmat(params["quats"][mask])
        noise = torch.randn((2, *scales.shape), generator=generator, device=scales.device)
        offsets = torch.einsum("mij,smj->smi", rotmats, scales.unsqueeze(0) * noise)  # [2, M, 3]
        new = {}
        for name, value in params.items():
            v = value[mask]
            if name == "means":
                new[name] = (v.unsqueeze(0) + offsets).reshape(-1, 3)
            elif name == "log_scales":
                new[name] = (v - torch.log(torch.tensor(1.6))).repeat(2, *([1] * (v.dim() - 1)))
            else:
                new[name] = v.repeat(2, *([1] * (v.dim() - 1)))
        self._remove(model, optimizer, mask)
        self._append(model, optimizer, new)

    def _prune(self, model: Any, optimizer, step: int) -> dict:
        cfg = self.cfg
        mask = model.opacities < cfg.prune_opa
        if cfg.reset_every > 0 and step > cfg.reset_every:
            mask |= model.scales.max(dim=-1).values > cfg.prune_scale3d * cfg.scene_scale
        # never prune everything
        if int(mask.sum()) >= model.num_gaussians:
            return {"pruned": 0}
        n = int(mask.sum())
        if n:
            self._remove(model, optimizer, mask)
        return {"pruned": n}

    def _reset_opacity(self, model: Any, optimizer) -> None:
        value = torch.clamp_max(model.opacities, 2.0 * self.cfg.prune_opa)
        _replace_param(optimizer, model.params, "opacity_logits", torch.logit(value, eps=1e-6),
                       lambda k, v: torch.zeros_like(v))


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[N, 4] quaternions (w, x, y, z; normalised here) → [N, 3, 3] rotation matrices."""
    q = torch.nn.functional.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)
