"""The LightningModule that composes representation, prior, guidance and background. It composes; it does not compute.

One training step (manual optimisation, so densification can edit parameters and optimizer state in place):
cameras ← sampler; out ← representation.render; losses ← guidance(out.rgb) + representation.regularizers;
total ← Σ λ_i(step)·loss_i; backward; clip; optimizer step; representation.post_step (densify/prune).
All randomness comes from generators owned here and saved in checkpoints, so a resumed run repeats the
uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .cameras import VIEW_SUFFIXES, CameraSampler, Cameras, orbit_cameras, view_direction_index
from .config import to_plain
from .errors import ConfigError
from .registry import component_class
from .schedule import Schedule, range_at, value_at


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible — use device=cpu (or auto)")
    return torch.device(name)


def eval_cameras(cfg: Any, width: Optional[int] = None, height: Optional[int] = None) -> Cameras:
    """Held-out cameras: an orbit whose azimuths are offset from multiples of 45°; never sampled exactly in training."""
    cam = cfg.camera
    return orbit_cameras(cam.eval_views, width or cam.width, height or cam.height, elevation=cam.eval_elevation,
                         distance=cam.eval_distance, fovy=cam.eval_fovy, start_azimuth=cam.eval_azimuth_offset)


def build_representation(cfg: Any, generator: Optional[torch.Generator] = None) -> nn.Module:
    cls = component_class("representation", cfg.representation.name, "representation.name")
    return cls(cfg.representation, generator=generator)


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
        self.sampler = CameraSampler(self.camera_gen)
        self._prior = None
        self._guidance = None
        self.text_cond = None
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
        object.__setattr__(self, "_prior", prior)
        cls = component_class("guidance", self.cfg.guidance.name, "guidance.name")
        guidance = cls(self.cfg.guidance, prior, int(self.cfg.trainer.max_steps))
        # guidance that owns trainable parts (VSD's LoRA) registers them as a submodule
        self.add_module("guidance_module", guidance)
        object.__setattr__(self, "_guidance", guidance)
        self._check_lambdas()

    def _check_lambdas(self) -> None:
        known = set(getattr(self._guidance, "loss_names", ())) | set(getattr(self.representation, "loss_names", ()))
        for name in self._lambdas:
            if name not in known:
                import difflib

                close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.5)
                valid = ", ".join(f"loss.lambda_{k}" for k in sorted(known))
                hint = f"did you mean loss.lambda_{close[0]}? " if close else ""
                raise ConfigError(f"loss.lambda_{name}: no loss term named '{name}' in this recipe — {hint}"
                                  f"terms: {valid}")

    def setup(self, stage: str) -> None:
        device = self.device
        self._prior.to(device)
        if self.noise_gen is None or self.noise_gen.device != device:
            self.noise_gen = torch.Generator(device=device).manual_seed(int(self.cfg.seed) + 3)
            self.strategy_gen = torch.Generator(device=device).manual_seed(self.strategy_gen_seed)
        prompt = str(self.cfg.prompt).strip()
        negative = str(self.cfg.negative_prompt)
        if self.cfg.camera.view_dependent_prompting:
            prompts = [f"{prompt}, {suffix}" for suffix in VIEW_SUFFIXES]
        else:
            prompts = [prompt]
        with torch.no_grad():
            self.text_cond = self._prior.encode_text(prompts, [negative] * len(prompts)).to(device)

    # -- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = list(self.representation.parameter_groups())
        groups += list(self._guidance.parameter_groups())
        if self.background.learned is not None:
            groups.append({"name": "background", "params": [self.background.learned],
                           "lr_schedule": float(self.cfg.background.learned_lr), "lr_key": "background.learned_lr"})
        for g in groups:
            g["lr"] = value_at(g["lr_schedule"], 0, g["lr_key"])
        clean = [{k: v for k, v in g.items() if k not in ("lr_schedule", "lr_key")} for g in groups]
        optimizer = torch.optim.Adam(clean, lr=1e-3)
        self._lr_schedules = [(g["lr_schedule"], g["lr_key"]) for g in groups]
        return optimizer

    def _set_learning_rates(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        for group, (schedule, key) in zip(optimizer.param_groups, self._lr_schedules):
            group["lr"] = value_at(schedule, step, key)

    def sample_cameras(self, step: int) -> Cameras:
        cam = self.cfg.camera
        cams = self.sampler.sample(
            int(cam.batch_size), int(cam.width), int(cam.height),
            elevation_range=range_at(cam.elevation_range, step, "camera.elevation_range"),
            azimuth_range=range_at(cam.azimuth_range, step, "camera.azimuth_range"),
            distance_range=range_at(cam.distance_range, step, "camera.distance_range"),
            fovy_range=range_at(cam.fovy_range, step, "camera.fovy_range"),
            uniform_sphere=bool(cam.uniform_sphere),
        )
        return cams.to(self.device)

    def text_for(self, cameras: Cameras):
        if self.text_cond.cond.shape[0] == 1:
            return self.text_cond.select(torch.zeros(len(cameras), dtype=torch.long))
        cam = self.cfg.camera
        idx = view_direction_index(cameras.elevation.cpu(), cameras.azimuth.cpu(), cam.front_threshold,
                                   cam.back_threshold, cam.overhead_threshold)
        return self.text_cond.select(idx)

    def training_step(self, batch: Any, batch_idx: int):
        step = int(self.global_step)
        optimizer = self.optimizers()
        raw_opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        self._set_learning_rates(raw_opt, step)
        cameras = self.sample_cameras(step)
        background = self.background(len(cameras), self.noise_gen)
        out = self.representation.render(cameras, background=background, step=step)
        images = out.rgb.permute(0, 3, 1, 2)
        terms = self._guidance(images, self.text_for(cameras), cameras, step, generator=self.noise_gen)
        terms.update(self.representation.regularizers(out, step))
        total = images.new_zeros(())
        for name, schedule in self._lambdas.items():
            weight = schedule(step)
            if weight != 0 and f"loss_{name}" in terms:
                total = total + weight * terms[f"loss_{name}"]
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(total)
        if float(self.cfg.trainer.grad_clip) > 0:
            torch.nn.utils.clip_grad_norm_(self.representation.parameters(), float(self.cfg.trainer.grad_clip))
        optimizer.step()
        info = self.representation.post_step(step, out, raw_opt, cameras, generator=self.strategy_gen) or {}
        if step % int(self.cfg.trainer.log_every) == 0 or step == int(self.cfg.trainer.max_steps) - 1:
            logs = {"train/loss": total.detach()}
            logs.update({f"train/{k}": v.detach() for k, v in terms.items() if torch.is_tensor(v)})
            if hasattr(self.representation, "num_gaussians"):
                logs["train/num_gaussians"] = float(self.representation.num_gaussians)
            logs.update({f"train/{k}": float(v) for k, v in info.items()})
            self.log_dict(logs, on_step=True, prog_bar=False, logger=True, batch_size=len(cameras))
        self.log("loss", total.detach(), prog_bar=True, logger=False, on_step=True, batch_size=len(cameras))
        return total.detach()

    # -- evaluation renders ------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, cameras: Cameras, step: Optional[int] = None, chunk: int = 8) -> torch.Tensor:
        """[B, H, W, 3] renders over the solid (eval) background."""
        outs = []
        for start in range(0, len(cameras), chunk):
            cams = cameras[start:start + chunk].to(self.device)
            bg = self.background(len(cams), training=False)
            outs.append(self.representation.render(cams, background=bg, step=step).rgb.clamp(0, 1).cpu())
        return torch.cat(outs)

    # -- checkpoint state beyond parameters -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dreamkit"] = {
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
        prefix = "representation.params."
        shapes = {k[len(prefix):]: v.shape for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        if hasattr(self.representation, "resize_to"):
            self.representation.resize_to(shapes)
        extra = checkpoint.get("dreamkit", {})
        if hasattr(self.representation, "load_extra_state_dict"):
            self.representation.load_extra_state_dict(extra.get("representation_extra", {}))
        # Lightning calls setup() (which creates the device generators) before restoring a checkpoint
        self._restore_generators(extra)

    def _restore_generators(self, extra: dict) -> None:
        if extra.get("camera_gen") is not None:
            self.camera_gen.set_state(extra["camera_gen"])
        if extra.get("torch_rng") is not None:
            torch.set_rng_state(extra["torch_rng"])
        if extra.get("noise_gen") is not None or extra.get("strategy_gen") is not None:
            if self.noise_gen is None or self.strategy_gen is None:  # resume would silently diverge otherwise
                raise RuntimeError("checkpoint restored before setup() created the device generators")
            self.noise_gen.set_state(extra["noise_gen"])
            self.strategy_gen.set_state(extra["strategy_gen"])


def load_representation_from_checkpoint(cfg: DictConfig, ckpt_path: Path, device: torch.device) -> nn.Module:
    """Rebuild the trained representation (no prior needed) for export and rendering."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    rep = build_representation(cfg)
    state = {k[len("representation."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("representation.")}
    prefix = "params."
    if hasattr(rep, "resize_to"):
        rep.resize_to({k[len(prefix):]: v.shape for k, v in state.items() if k.startswith(prefix)})
    rep.load_state_dict(state)
    return rep.to(device).eval()


def background_from_checkpoint(cfg: DictConfig, ckpt_path: Path) -> torch.Tensor:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if cfg.background.type == "learned" and "background.learned" in ckpt["state_dict"]:
        return torch.sigmoid(ckpt["state_dict"]["background.learned"])
    return torch.tensor(list(cfg.background.color), dtype=torch.float32)
