"""The LightningModule that composes representation, prior, guidance and background. It composes; it does not compute.

One training step (manual optimisation, so densification can edit parameters and optimizer state in place):
batch ← sampler (cameras in the layout's groups, the prompt component's text per camera); out ←
representation.render; losses ← guidance(out, batch) + representation.regularizers; total ← Σ λ_i(step)·loss_i;
backward; clip; each component's optimizer steps on its cadence; representation.post_step (densify/prune) with the
representation's optimizer only.
All randomness comes from generators owned here and saved in checkpoints, so a resumed run repeats the
uninterrupted one.

The step itself is :meth:`DreamSystem.optimization_step` (one step given an optimizer, no Lightning needed);
Lightning's ``training_step`` calls it and adds logging, and ``dreamkit bench`` calls it directly with a
:class:`~dreamkit.timing.StepTimer`. On CUDA it never waits for the device outside the renderer (whose tile binning
must read back how many Gaussian–tile pairs to allocate): cameras are drawn on the host and sent in one pinned,
asynchronous copy, and nothing is read back except on logging steps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .batch import Batch, BatchSampler, Layout, Shard
from .cameras import Cameras
from .config import to_plain
from .errors import ConfigError
from .guidance.composed import ComposedGuidance
from .optim import ComponentOptimizer, build_optimizer
from .prompts import PromptComponent
from .registry import component_class
from .representations.particles import Particles, resize_to_state
from .schedule import Schedule
from .timing import NULL_TIMER
from .types import TextCond
# the Lightning-free helpers live in .components (export, render and eval import them without Lightning); re-exported
from .components import (background_from_checkpoint, build_representation, eval_cameras,  # noqa: F401
                         export_member, load_representation_from_checkpoint, resolve_device)


def host_to_device(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Copy host tensors to ``device`` without a host–device synchronisation: on CUDA one pinned, non-blocking
    transfer per dtype (views of it come back, each contiguous); elsewhere ``tensor.to(device)``."""
    if device.type != "cuda":
        return [t.to(device) for t in tensors]
    out: list[Optional[torch.Tensor]] = [None] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for idxs in by_dtype.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in idxs]).pin_memory()
        on_device = flat.to(device, non_blocking=True)
        for i, part in zip(idxs, on_device.split([tensors[i].numel() for i in idxs])):
            out[i] = part.view(tensors[i].shape)
    return out  # type: ignore[return-value]


@dataclass
class StepResult:
    """What one optimisation step produced (device tensors; nothing has been read back to the host)."""

    loss: torch.Tensor
    terms: dict[str, Any]
    info: dict[str, Any]
    cameras: Cameras


#: loss terms of the system itself, for every representation (beside the guidance's and the representation's)
SYSTEM_LOSS_NAMES = ("unseen",)


def unseen_alpha(rgb: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor, sigma: float) -> torch.Tensor:
    """``loss_unseen``: alpha that the prior cannot see — mean over pixels of w · alpha, with
    w = exp(−(‖c − background‖ / sigma)²), c = (rgb − (1 − alpha)·background) / alpha the colour of the matter
    that a pixel composites (w, c detached; alpha ≥ 1e-3 in the division).

    A score-distillation prior sees only the composite rgb = c·α + bg·(1 − α). Where the matter's colour c is close
    to the background's, the image gradient moves neither c nor α (∂rgb/∂α = c − bg ≈ 0), so pale,
    background-coloured matter that the prior's early, high-noise steps put down is never taken away: it fills a
    ring's hole and hazes a cube's top, and the visual hull export (alpha ≥ ``export.mesh_hull_alpha``) keeps it as
    solid. This term takes away exactly that alpha. It leaves alone matter whose colour the prior sees (w < 0.02
    beyond 2·sigma) at any alpha — the faint fringe of a red object keeps its red c, so silhouettes are not eaten
    (weighting by the composite's distance instead would). dreamkit's own regulariser (not from a paper); NeRF's
    sparsity (``loss.lambda_sparsity``) pulls every covered pixel instead, and shrinks what the prior wants kept.

    rgb [B, H, W, 3], alpha [B, H, W, 1], background [B, 3] → scalar.
    """
    bg = background.view(background.shape[0], 1, 1, -1).to(rgb.dtype)
    with torch.no_grad():
        a = alpha.detach()
        matter = (rgb.detach() - (1 - a) * bg) / a.clamp_min(1e-3)
        weight = torch.exp(-((matter - bg).norm(dim=-1, keepdim=True) / float(sigma)) ** 2)
    return (weight * alpha).mean()


class Background(nn.Module):
    """solid | random (a random colour per image, as threestudio's random background) | learned (one RGB parameter)."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.type = cfg.type
        self.register_buffer("color", torch.tensor(list(cfg.color), dtype=torch.float32), persistent=False)
        self.learned = nn.Parameter(torch.logit(self.color.clamp(0.01, 0.99))) if cfg.type == "learned" else None

    def forward(self, batch: int, generator: Optional[torch.Generator] = None, training: bool = True) -> torch.Tensor:
        if self.type == "learned":
            return torch.sigmoid(self.learned).expand(batch, 3)
        if self.type == "random" and training:
            return torch.rand(batch, 3, generator=generator, device=self.color.device)
        return self.color.expand(batch, 3)


class DreamSystem(pl.LightningModule):
    def __init__(self, cfg: DictConfig, run_dir: Optional[Path] = None):
        super().__init__()
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.automatic_optimization = False
        seed = int(cfg.seed)
        init_gen = torch.Generator().manual_seed(seed)
        self.representation = build_representation(cfg, init_gen)
        self.background = Background(cfg.background)
        # generators: cameras (CPU), noise/timesteps (on the device, created in setup), densification
        self.camera_gen = torch.Generator().manual_seed(seed + 1)
        self.strategy_gen_seed = seed + 2
        self.noise_gen: Optional[torch.Generator] = None
        self.strategy_gen: Optional[torch.Generator] = None
        # one fit in several processes (dreamkit.distributed): this rank, their number, the rank's own stream and
        # its images of every batch; set in setup(), when the process group exists
        self.rank, self.world = 0, 1
        self.rank_gen: Optional[torch.Generator] = None
        self._shard_host: Optional[torch.Tensor] = None
        self._shard_device: Optional[torch.Tensor] = None
        self.prompts = PromptComponent.from_config(cfg)
        self.layout = Layout(views=int(cfg.camera.views), frames=int(getattr(cfg.camera, "frames", 1)),
                             particles=int(cfg.get("particles", 1) or 1))
        self.sampler = BatchSampler(cfg.camera, self.layout, self.camera_gen, self.prompts)
        self._prior = None
        self._guidance = None
        self._component_optimizers: list[ComponentOptimizer] = []
        # steps with a NaN/inf loss, in all and in a row (see _count_nonfinite; device tensors on CUDA)
        self.nonfinite_total: Any = 0
        self.nonfinite_run: Any = 0
        self._timer = NULL_TIMER  # dreamkit bench swaps in a StepTimer (see set_timer)
        self._lambdas = {k[len("lambda_"):]: Schedule.parse(to_plain(v), f"loss.{k}") for k, v in cfg.loss.items()}

    # -- components that live outside the state_dict -----------------------------------------------------------
    @property
    def prior(self):
        return self._prior

    @property
    def guidance(self):
        return self._guidance

    def attach_prior(self, prior: nn.Module) -> None:
        """Frozen priors are not part of checkpoints (they can be GBs); attach before fit."""
        cls = component_class("guidance", self.cfg.guidance.name, "guidance.name")
        if hasattr(cls, "from_recipe"):  # composed guidance: each member has its own prior, layout and sampler
            object.__setattr__(self, "_prior", prior)
            guidance = cls.from_recipe(self.cfg, prior, int(self.cfg.trainer.max_steps), self.camera_gen)
            guidance.check_representation(self.representation)
            self.add_module("guidance_module", guidance)
            object.__setattr__(self, "_guidance", guidance)
            self._check_lambdas()
            return
        views, cam = int(getattr(prior, "views", 1)), self.cfg.camera
        if self.layout.views != views or int(cam.batch_size) % views:
            raise ConfigError(f"this prior denoises groups of {views} view(s) but camera.views={cam.views} and "
                              f"camera.batch_size={cam.batch_size} — set camera.views={views} and a batch_size that "
                              f"is a multiple of it")
        frames = int(getattr(prior, "frames", 1) or 1)
        if frames > 1 and self.layout.frames != frames:
            raise ConfigError(f"this prior denoises clips of {frames} frames but camera.frames={getattr(cam, 'frames', 1)} "
                              f"— set camera.frames={frames} and a batch_size that is a multiple of "
                              f"{frames * views}")
        if frames == 1 and self.layout.frames > 1:
            raise ConfigError(f"camera.frames={self.layout.frames} but this prior denoises single images — set "
                              "camera.frames=1 (each image gets its own time from camera.time_range)")
        self.prompts.uses_view_variants(prior)  # camera.view_dependent_prompting=true on a prior without view text
        for member in self._members():  # a representation in the prior's own space (the 2D image) sizes itself
            if hasattr(member, "bind_prior"):
                member.bind_prior(prior)
        object.__setattr__(self, "_prior", prior)
        guidance = cls(self.cfg.guidance, prior, int(self.cfg.trainer.max_steps))
        # guidance that owns trainable parts (VSD's LoRA) registers them as a submodule
        self.add_module("guidance_module", guidance)
        object.__setattr__(self, "_guidance", guidance)
        self._check_lambdas()

    def _check_lambdas(self) -> None:
        known = (set(getattr(self._guidance, "loss_names", ())) | set(getattr(self.representation, "loss_names", ()))
                 | set(SYSTEM_LOSS_NAMES))
        for name in self._lambdas:
            if name not in known:
                import difflib

                close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.5)
                valid = ", ".join(f"loss.lambda_{k}" for k in sorted(known))
                hint = f"did you mean loss.lambda_{close[0]}? " if close else ""
                raise ConfigError(f"loss.lambda_{name}: no loss term named '{name}' in this recipe — {hint}"
                                  f"terms: {valid}")

    def set_timer(self, timer: Any = None) -> None:
        """Time the sections of each step with ``timer`` (a :class:`~dreamkit.timing.StepTimer`); None disables."""
        timer = timer if timer is not None else NULL_TIMER
        object.__setattr__(self, "_timer", timer)
        if self._guidance is not None and hasattr(self._guidance, "timer"):
            object.__setattr__(self._guidance, "timer", timer)

    def setup(self, stage: str) -> None:
        device = self.device
        self._prior.to(device)
        if self.noise_gen is None or self.noise_gen.device != device:
            self.noise_gen = torch.Generator(device=device).manual_seed(int(self.cfg.seed) + 3)
            self.strategy_gen = torch.Generator(device=device).manual_seed(self.strategy_gen_seed)
        self._setup_ranks(device)
        if self.composed:  # the members' own priors and prompts (the recipe's prompt as each member's template has
            self._guidance.setup(device)  # it, encoded by its own prior)
        else:
            self.prompts.setup(self._prior, device)

    def _setup_ranks(self, device: torch.device) -> None:
        """Under a process group of W > 1 ranks: this rank's images of every batch and its own random stream (the
        batch's shared draws stay on ``noise_gen``, in the same state on every rank). One process: nothing."""
        from .distributed import rank_seed, shard_index

        dist = torch.distributed
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank, self.world = (dist.get_rank(), world) if world > 1 else (0, 1)
        if world == 1:
            self.rank_gen, self._shard_host, self._shard_device = None, None, None
            return
        index = shard_index(int(self.cfg.camera.batch_size), self.layout.particles, self.rank, world)
        self._shard_host, self._shard_device = index, index.to(device)
        if self.rank_gen is None or self.rank_gen.device != device:
            self.rank_gen = torch.Generator(device=device).manual_seed(rank_seed(int(self.cfg.seed), self.rank))

    @property
    def own_gen(self) -> Optional[torch.Generator]:
        """The generator of what a rank draws for itself alone (a guidance's draws beyond the batch's timesteps and
        noise): the batch's own ``noise_gen`` in a one-process fit, so nothing changes there."""
        return self.rank_gen if self.world > 1 else self.noise_gen

    def check_prompts(self) -> None:
        """The prior's checks of the recipe's prompt, before any work (e.g. a prompt it cannot express). Composed
        guidance checked each member's own prompt against its own prior when it was attached."""
        if not self.composed:
            self.prompts.check(self._prior)

    @property
    def composed(self) -> bool:
        """Whether the guidance is composed (``guidance.name: composed``): members with their own priors, prompts
        and loss terms, one member a step."""
        return isinstance(self._guidance, ComposedGuidance)

    @property
    def text_cond(self) -> Optional[TextCond]:
        """Every prompt variant, encoded (the prompt component's; None before setup)."""
        return self.prompts.text

    def _members(self) -> list[nn.Module]:
        """The representation's particles (itself when there is one)."""
        rep = self.representation
        return list(rep.members) if isinstance(rep, Particles) else [rep]

    # -- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        """One Adam per trainable component, in this order: representation (one per particle), learned background,
        guidance (VSD's φ, stepped every ``guidance.lora_every`` steps). Lightning checkpoints them all."""
        members = self._members()
        specs = [build_optimizer("representation" if len(members) == 1 else f"representation.{i}",
                                 list(member.parameter_groups())) for i, member in enumerate(members)]
        if self.background.learned is not None:
            specs.append(build_optimizer("background", [{
                "name": "background", "params": [self.background.learned],
                "lr_schedule": float(self.cfg.background.learned_lr), "lr_key": "background.learned_lr"}]))
        guidance_groups = list(self._guidance.parameter_groups())
        if guidance_groups:
            specs.append(build_optimizer("guidance", guidance_groups, int(getattr(self._guidance, "update_every", 1))))
        self._component_optimizers = specs
        optimizers = [spec.optimizer for spec in specs]
        return optimizers[0] if len(optimizers) == 1 else optimizers

    def sample_batch(self, step: int) -> Batch:
        """The step's :class:`~dreamkit.batch.Batch` on the device: cameras and their prompt-variant index drawn on
        the host, then sent in one asynchronous copy (no synchronisation on CUDA), the text gathered there."""
        if self.composed:  # the step's member draws its own batch
            return self._guidance.sample_batch(step, self._host_batch_to_device)
        host = self.sampler.sample(step)
        prompts, shard = host.prompts, None
        if self.world > 1:  # every rank draws the whole batch (the same cameras) and keeps its own images
            rows = self._shard_host
            shard = Shard(self._shard_device, len(host.cameras), self.noise_gen)
            prompts = [prompts[i] for i in rows.tolist()] if prompts else prompts
            host = dataclasses.replace(host, cameras=host.cameras[rows], prompts=prompts,
                                       prompt_index=host.prompt_index[rows] if host.prompt_index is not None
                                       else None)
        cameras, index = self._host_batch_to_device(host)
        return Batch(cameras, self.prompts.select(index, len(cameras), host.prompts), self.layout, index,
                     self.prompts.region_text, shard=shard)

    def _host_batch_to_device(self, host: Any) -> tuple[Cameras, Optional[torch.Tensor]]:
        """A host batch's cameras and prompt-variant index on the device (one asynchronous copy on CUDA)."""
        cams, index = host.cameras, host.prompt_index
        fields = [cams.c2w, cams.K, cams.elevation, cams.azimuth, cams.distance, cams.fovy, cams.time]
        if index is not None:
            fields.append(index)
        moved = host_to_device(fields, self.device)
        cameras = Cameras(moved[0], moved[1], cams.width, cams.height, *moved[2:7])
        index = moved[7] if index is not None else None
        return cameras, index

    def is_log_step(self, step: int) -> bool:
        return step % int(self.cfg.trainer.log_every) == 0 or step == int(self.cfg.trainer.max_steps) - 1

    def optimization_step(self, step: int, optimizer: Any,
                          backward: Optional[Callable[[torch.Tensor], Any]] = None) -> StepResult:
        """One training step at ``step`` with ``optimizer`` (a torch optimizer or Lightning's wrapper of it).

        ``backward(loss)`` defaults to ``loss.backward()`` (Lightning passes ``manual_backward``). Reads nothing
        back from the device; sections are timed when a timer is set (:meth:`set_timer`).
        """
        timer = self._timer
        optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        specs = self._component_optimizers
        if len(optimizers) != len(specs):
            raise RuntimeError(f"optimization_step got {len(optimizers)} optimizer(s) for {len(specs)} components "
                               "(pass what configure_optimizers returned)")
        raw = [opt.optimizer if hasattr(opt, "optimizer") else opt for opt in optimizers]
        for spec, opt in zip(specs, raw):
            spec.set_learning_rates(step, opt)
        batch = self.sample_batch(step)
        cameras = batch.cameras
        if batch.shard is None:
            background = self.background(len(cameras), self.noise_gen)
        else:  # the whole batch's backgrounds, this rank's rows
            background = self.background(batch.shard.size, self.noise_gen)[batch.shard.index]
        # a guidance may ask for a variant of the render (compositional SDS: one part alone)
        options = self._guidance.render_options(step, batch)
        if self.cfg.trainer.exact_batch_sum:  # per-image gradient sums in float64 (dreamkit.distributed)
            options = {**options, "exact_sum": True}
        with timer("render"):
            out = self.representation.render(cameras, background=background, step=step, **options)
        with timer("guidance"):
            terms = self._guidance(out, batch, step, generator=self.own_gen)
        with timer("regularizers"):
            terms.update(self.representation.regularizers(out, step))
            if "unseen" in self._lambdas:
                terms["loss_unseen"] = unseen_alpha(out.rgb, out.alpha, background,
                                                    float(self.cfg.background.unseen_sigma))
        total = None
        for name, schedule in self._lambdas.items():
            weight = schedule(step)
            if weight != 0 and f"loss_{name}" in terms:
                term = weight * terms[f"loss_{name}"]
                total = term if total is None else total + term
        if total is None:
            total = out.rgb.new_zeros(())
        for opt in raw:
            opt.zero_grad(set_to_none=True)
        with timer("backward"):
            if backward is None:
                total.backward()
            else:
                backward(total)
        if self.world > 1:
            with timer("all_reduce"):
                total = self._average_over_ranks(total, terms)
        finite = self._count_nonfinite(total.detach())
        if finite is False:  # CPU: the step is skipped exactly (no update, no densification statistics)
            for opt in raw:
                opt.zero_grad(set_to_none=True)
            return StepResult(loss=total.detach(), terms=terms, info={}, cameras=cameras)
        with timer("optimizer"):
            if float(self.cfg.trainer.grad_clip) > 0:
                for member in self._members():  # each particle's norm on its own
                    torch.nn.utils.clip_grad_norm_(member.parameters(), float(self.cfg.trainer.grad_clip))
            # the first (the representation's) through Lightning's wrapper, which counts trainer.global_step once per
            # step; the others as plain torch optimizers, or Lightning would count every optimizer's step
            optimizers[0].step()
            for spec, opt in zip(specs[1:], raw[1:]):
                if spec.due(step):
                    opt.step()
        with timer("post_step"):
            if isinstance(self.representation, Particles):
                info = self.representation.post_steps(step, out, raw[:len(self.representation)], cameras,
                                                      generator=self.strategy_gen)
            else:
                info = self.representation.post_step(step, out, raw[0], cameras, generator=self.strategy_gen) or {}
        return StepResult(loss=total.detach(), terms=terms, info=info, cameras=cameras)

    def _average_over_ranks(self, total: torch.Tensor, terms: dict[str, Any]) -> torch.Tensor:
        """Average the gradients of every trainable parameter over the ranks (each rank's loss is a mean over its own
        images, so the mean is the gradient of the whole batch's loss) and the step's loss and scalar terms (what is
        logged and checked for NaN is the whole batch's). Returns the averaged loss; ``terms`` are updated."""
        from .distributed import average_gradients

        names = [k for k, v in terms.items() if torch.is_tensor(v) and v.dim() == 0]
        params = [p for p in self.parameters() if p.requires_grad]
        means = average_gradients(params, [total] + [terms[k] for k in names])
        for k, v in zip(names, means[1:]):
            terms[k] = v
        return means[0]

    def _count_nonfinite(self, loss: torch.Tensor) -> Optional[bool]:
        """Track steps whose loss is NaN or infinite: ``nonfinite_total`` and ``nonfinite_run`` (consecutive).

        On the CPU (where reading a value costs nothing) returns whether the loss is finite, and the caller skips a
        non-finite step exactly. On CUDA it reads nothing back (a step never synchronises): the gradients of a
        non-finite step are zeroed on the device, so no NaN or inf reaches the parameters or Adam's moments (Adam's
        momentum still moves the parameters that step), the counters stay on the device, and
        :meth:`check_nonfinite` reads them on logging steps. Returns None there.
        """
        finite = torch.isfinite(loss)
        if loss.device.type == "cpu":
            ok = bool(finite)
            self.nonfinite_total += not ok
            self.nonfinite_run = 0 if ok else self.nonfinite_run + 1
            return ok
        for param in self.representation.parameters():
            if param.grad is not None:
                param.grad = torch.where(finite, param.grad, torch.zeros((), device=param.grad.device,
                                                                         dtype=param.grad.dtype))
        bad = (~finite).to(torch.int64)
        self.nonfinite_run = (self.nonfinite_run + 1) * bad  # ints become device tensors at the first CUDA step
        self.nonfinite_total = self.nonfinite_total + bad
        return None

    def check_nonfinite(self, step: int) -> None:
        """Raise TrainingDiverged once ``trainer.nonfinite_patience`` consecutive steps had a non-finite loss (on
        CUDA this reads the device counters: call it where the step already synchronises)."""
        from .errors import TrainingDiverged

        run = int(self.nonfinite_run)
        patience = int(self.cfg.trainer.nonfinite_patience)
        if run >= patience:
            total = int(self.nonfinite_total)
            where = f" in {self.run_dir}" if self.run_dir else ""
            raise TrainingDiverged(
                f"the loss was NaN or infinite for {run} steps in a row (up to step {step}; {total} skipped in all) "
                f"— training stopped{where}; its last checkpoint holds the last finite parameters. Lower the learning "
                "rates or guidance.guidance_scale, or set trainer.grad_clip")

    def training_step(self, batch: Any, batch_idx: int):
        step = int(self.global_step)
        result = self.optimization_step(step, self.optimizers(), backward=self.manual_backward)
        if result.loss.device.type == "cpu" or self.is_log_step(step):
            self.check_nonfinite(step)
        if self.is_log_step(step):  # the only place a step reads values back from the device
            batch_size = len(result.cameras)
            logs = {"train/loss": result.loss}
            logs.update({f"train/{k}": v.detach() for k, v in result.terms.items() if torch.is_tensor(v)})
            if self.composed:  # the other members' terms are absent this step (NaN,
                for name in self._guidance.loss_names:  # not the last value Lightning would carry over)
                    logs.setdefault(f"train/loss_{name}", float("nan"))
            if hasattr(self.representation, "num_gaussians"):
                logs["train/num_gaussians"] = float(self.representation.num_gaussians)
            logs.update({f"train/{k}": float(v) for k, v in result.info.items()})
            self.log_dict(logs, on_step=True, prog_bar=False, logger=True, batch_size=batch_size)
            # a host copy: the progress bar converts its metrics to numbers after every batch
            self.log("loss", result.loss.cpu(), prog_bar=True, logger=False, on_step=True, batch_size=batch_size)
        return result.loss

    # -- evaluation renders ------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, cameras: Cameras, step: Optional[int] = None, chunk: int = 8) -> torch.Tensor:
        """[B, H, W, 3] renders over the solid (eval) background."""
        model = export_member(self.representation, self.cfg)  # with particles: export.particle
        outs = []
        for start in range(0, len(cameras), chunk):
            cams = cameras[start:start + chunk].to(self.device)
            bg = self.background(len(cams), training=False)
            outs.append(model.render(cams, background=bg, step=step).rgb.clamp(0, 1).cpu())
        return torch.cat(outs)

    # -- checkpoint state beyond parameters -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # called on every rank (Lightning's save_checkpoint is collective); rank zero writes the file
        ranks = None
        if self.world > 1:
            from .distributed import gather_states

            ranks = {"world": self.world, "rank_gen": gather_states(self.rank_gen.get_state()),
                     "torch_rng": gather_states(torch.get_rng_state())}
        checkpoint["dreamkit"] = {
            "ranks": ranks,
            "camera_gen": self.camera_gen.get_state(),
            "noise_gen": self.noise_gen.get_state() if self.noise_gen is not None else None,
            "strategy_gen": self.strategy_gen.get_state() if self.strategy_gen is not None else None,
            "torch_rng": torch.get_rng_state(),
            "representation_extra": self.representation.extra_state_dict()
            if hasattr(self.representation, "extra_state_dict") else {},
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # parameters change shape during training (densification): reallocate before the state_dict is loaded
        prefix = "representation."
        resize_to_state(self.representation,
                        {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
        extra = checkpoint.get("dreamkit", {})
        if hasattr(self.representation, "load_extra_state_dict"):
            self.representation.load_extra_state_dict(extra.get("representation_extra", {}))
        # Lightning calls setup() (which creates the device generators) before restoring a checkpoint
        self._restore_generators(extra)

    def _restore_generators(self, extra: dict) -> None:
        ranks = extra.get("ranks")
        saved_world = int(ranks["world"]) if ranks else 1
        if saved_world != self.world:
            from .errors import DreamkitError

            where = f" {self.run_dir}" if self.run_dir else ""
            raise DreamkitError(f"the checkpoint of{where} was written by a fit in {saved_world} process(es) and this "
                                f"one runs in {self.world}: resume it with trainer.devices × trainer.num_nodes = "
                                f"{saved_world} (each process's random stream is saved for its rank)")
        if ranks:
            self.rank_gen.set_state(ranks["rank_gen"][self.rank])
            torch.set_rng_state(ranks["torch_rng"][self.rank])
        if extra.get("camera_gen") is not None:
            self.camera_gen.set_state(extra["camera_gen"])
        if extra.get("torch_rng") is not None and not ranks:
            torch.set_rng_state(extra["torch_rng"])
        if extra.get("noise_gen") is not None or extra.get("strategy_gen") is not None:
            if self.noise_gen is None or self.strategy_gen is None:  # resume would silently diverge otherwise
                raise RuntimeError("checkpoint restored before setup() created the device generators")
            self.noise_gen.set_state(extra["noise_gen"])
            self.strategy_gen.set_state(extra["strategy_gen"])
