"""PBR shading of surface points: albedo, roughness, metallic (+ an optional normal perturbation).

Two lighting modes, both plain tensor code over per-point attributes (the mesh representations call them on the
visible pixels of a rasterized mesh):

* **point light + ambient** (:func:`shade_point_light`): Cook-Torrance microfacet BRDF with the GGX / Trowbridge-Reitz
  distribution, Schlick's Fresnel and the Smith-Schlick geometry term with k = (r + 1)²/8, α = r² — the shading
  model of Karis 2013, "Real Shading in Unreal Engine 4" (SIGGRAPH course notes). For a point x with unit normal n,
  view direction v (towards the camera) and light direction l (towards the light), h = normalize(l + v)::

      F0   = lerp(0.04, albedo, metallic)
      D    = α² / (π ((n·h)² (α² − 1) + 1)²)
      F    = F0 + (1 − F0) (1 − v·h)⁵
      G    = G1(n·l) G1(n·v),  G1(x) = x / (x (1 − k) + k)
      f_s  = D F G / (4 (n·l) (n·v))
      k_d  = (1 − F) (1 − metallic)
      rgb  = ambient · albedo + E · max(n·l, 0) · (k_d · albedo / π + f_s)

  E is the light's irradiance (``light_intensity``; no distance fall-off, so only the light's *direction* matters).
* **environment map** (:func:`shade_envmap`): the environment is 9 real spherical-harmonic coefficients per colour
  channel (order 2). Diffuse light is the SH irradiance of Ramamoorthi & Hanrahan 2001 ("An Efficient
  Representation for Irradiance Environment Maps"): E(n) = Σ_lm Â_l L_lm Y_lm(n) with Â = (π, 2π/3, π/4).
  Specular light uses the split-sum approximation of Karis 2013: prefiltered radiance along the reflected direction
  times the environment BRDF F0·A + B. The prefiltered radiance is a band-limited blur of the SH environment (band l
  scaled by exp(−l(l+1)·α²/2), a heat-kernel lobe that widens with roughness: our simplification of a prefiltered
  mip chain), and (A, B) is Karis's analytic fit of the pre-integrated BRDF ("Physically Based Shading on Mobile",
  Unreal Engine blog, 2014).

Training renders pick a shading mode per batch, as DreamFusion (Poole et al. 2022) does: ``albedo`` (colour only),
``textureless`` (white albedo, shaded — the geometry alone must explain the image) and ``shaded``; evaluation and
export use ``albedo``. :func:`sample_shading_mode` draws the mode from configured probabilities with a given
generator, :func:`sample_light_positions` draws light positions around the cameras.

Shapes: every function takes per-point tensors [..., C] with matching leading dimensions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "MaterialConfig",
    "SHADING_MODES",
    "sh_basis",
    "sh_irradiance",
    "sh_prefiltered_radiance",
    "sky_environment_sh",
    "env_brdf_approx",
    "ggx_distribution",
    "fresnel_schlick",
    "smith_schlick_g",
    "perturb_normal",
    "shade_point_light",
    "shade_envmap",
    "shade",
    "sample_shading_mode",
    "sample_light_positions",
]

SHADING_MODES = ("albedo", "textureless", "shaded")


@dataclass
class MaterialConfig:
    """Shading settings of the mesh representations (``representation.material.*``)."""

    #: probabilities of the training shading modes [albedo, textureless, shaded] (renormalised; eval uses albedo)
    mode_probs: List[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])
    #: lighting of the shaded modes: point (point light + ambient) | envmap (SH environment, split sum)
    lighting: str = "point"
    ambient: float = 0.3
    #: irradiance E of the point light (π·0.7: a white diffuse surface facing the light gets 0.3 + 0.7 = 1)
    light_intensity: float = 2.2
    #: light positions: around the camera's direction, jittered by this std (radians-ish), at these distances
    light_jitter: float = 0.5
    light_distance_range: List[float] = field(default_factory=lambda: [2.0, 4.0])
    #: textureless mode's constant albedo
    textureless_albedo: float = 0.8
    #: envmap lighting: 27 SH coefficients (9 per channel, channel-major) or [] for a default sky/ground
    env_sh: List[float] = field(default_factory=list)
    #: initial roughness and metallic of the material field (its outputs start there)
    init_roughness: float = 0.7
    init_metallic: float = 0.02
    #: let the material field also predict a normal perturbation (tangent offsets, scaled by this; 0 = off)
    normal_perturbation: float = 0.0


# ------------------------------------------------------------------------------------------------------------------
# spherical harmonics (real, orders 0-2)

_SH_C0 = 0.28209479177387814        # 1 / (2 √π)
_SH_C1 = 0.4886025119029199         # √3 / (2 √π)
_SH_C2 = 1.0925484305920792         # √15 / (2 √π)
_SH_C3 = 0.31539156525252005        # √5 / (4 √π)
_SH_C4 = 0.5462742152960396         # √15 / (4 √π)
#: Ramamoorthi & Hanrahan's cosine-lobe convolution factors Â_l for l = 0, 1, 2 (per coefficient)
_IRRADIANCE_A = (math.pi,) + (2 * math.pi / 3,) * 3 + (math.pi / 4,) * 5
_BAND = (0, 1, 1, 1, 2, 2, 2, 2, 2)


def sh_basis(dirs: torch.Tensor) -> torch.Tensor:
    """Unit directions [..., 3] (x, y, z) → the 9 real SH basis values [..., 9], ordered (l, m) = (0,0), (1,−1),
    (1,0), (1,1), (2,−2), (2,−1), (2,0), (2,1), (2,2)."""
    x, y, z = dirs.unbind(-1)
    return torch.stack([
        torch.full_like(x, _SH_C0),
        _SH_C1 * y, _SH_C1 * z, _SH_C1 * x,
        _SH_C2 * x * y, _SH_C2 * y * z, _SH_C3 * (3 * z * z - 1), _SH_C2 * x * z, _SH_C4 * (x * x - y * y),
    ], -1)


def _sh_eval(dirs: torch.Tensor, sh: torch.Tensor, band_scale: torch.Tensor) -> torch.Tensor:
    """Σ_lm band_scale[..., lm] · sh[lm, c] · Y_lm(dirs) → [..., 3]. sh: [9, 3]."""
    return ((sh_basis(dirs) * band_scale)[..., None] * sh.to(dirs)).sum(-2)


def sh_irradiance(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Irradiance E(n) [..., 3] of the SH environment ``sh`` [9, 3] at unit normals [..., 3] (Ramamoorthi &
    Hanrahan 2001): Σ_lm Â_l L_lm Y_lm(n). A Lambertian surface of albedo a reflects a·E/π."""
    scale = torch.tensor(_IRRADIANCE_A, dtype=normals.dtype, device=normals.device)
    return _sh_eval(normals, sh, scale)


def sh_prefiltered_radiance(dirs: torch.Tensor, sh: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Radiance of the SH environment blurred by a lobe that widens with roughness [..., 1]: band l scaled by
    exp(−l(l+1)·α²/2), α = roughness² (the prefiltered environment of the split sum, band-limited). [..., 3]."""
    band = torch.tensor(_BAND, dtype=dirs.dtype, device=dirs.device)
    alpha = roughness.clamp(0.0, 1.0) ** 2
    scale = torch.exp(-(band * (band + 1)) * alpha * alpha / 2)
    return _sh_eval(dirs, sh, scale)


def sky_environment_sh(sky: Sequence[float] = (1.0, 1.0, 1.0), ground: Sequence[float] = (0.35, 0.3, 0.25)
                       ) -> torch.Tensor:
    """[9, 3] SH of a radiance that blends linearly from ``ground`` (straight down, −Y) to ``sky`` (+Y):
    L(ω) = m + d·ω_y with m = (sky + ground)/2, d = (sky − ground)/2. Its projection: L_00 = m·4π·C0 and
    L_1,−1 = d·(4π/3)·C1 (C0, C1 the constants of Y_00 and of the y-linear Y_1,−1); all others vanish."""
    sky_t, ground_t = torch.tensor(list(sky), dtype=torch.float32), torch.tensor(list(ground), dtype=torch.float32)
    m, d = (sky_t + ground_t) / 2, (sky_t - ground_t) / 2
    sh = torch.zeros(9, 3)
    sh[0] = m * 4 * math.pi * _SH_C0
    sh[1] = d * 4 * math.pi / 3 * _SH_C1
    return sh


def environment_sh(cfg: "MaterialConfig") -> torch.Tensor:
    """The [9, 3] environment of a :class:`MaterialConfig` (its ``env_sh``, channel-major, or the default sky)."""
    values = list(cfg.env_sh)
    if not values:
        return sky_environment_sh()
    if len(values) != 27:
        from ..errors import ConfigError

        raise ConfigError(f"representation.material.env_sh must have 27 numbers (9 SH coefficients × RGB, "
                          f"channel-major), got {len(values)}")
    return torch.tensor(values, dtype=torch.float32).view(3, 9).t().contiguous()


# ------------------------------------------------------------------------------------------------------------------
# BRDF terms (Karis 2013)


def ggx_distribution(n_dot_h: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """GGX / Trowbridge-Reitz normal distribution D with α = roughness²."""
    a2 = (roughness ** 2) ** 2
    denom = n_dot_h ** 2 * (a2 - 1) + 1
    return a2 / (math.pi * denom ** 2).clamp_min(1e-12)


def fresnel_schlick(f0: torch.Tensor, v_dot_h: torch.Tensor) -> torch.Tensor:
    """Schlick's Fresnel: F0 + (1 − F0)(1 − v·h)⁵."""
    return f0 + (1 - f0) * (1 - v_dot_h).clamp(0, 1) ** 5


def smith_schlick_g(n_dot_l: torch.Tensor, n_dot_v: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Smith geometry term with Schlick's G1 and Karis's k = (r + 1)²/8 (analytic lights)."""
    k = (roughness + 1) ** 2 / 8

    def g1(x):
        return x / (x * (1 - k) + k).clamp_min(1e-12)

    return g1(n_dot_l) * g1(n_dot_v)


def env_brdf_approx(n_dot_v: torch.Tensor, roughness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Karis's analytic fit (Physically Based Shading on Mobile, 2014) of the split-sum pre-integrated BRDF:
    the specular reflectance is F0·A + B. Inputs [..., 1] → (A, B) each [..., 1]."""
    r0 = roughness * -1.0 + 1.0
    r1 = roughness * -0.0275 + 0.0425
    r2 = roughness * -0.572 + 1.04
    r3 = roughness * 0.022 - 0.04
    a004 = torch.minimum(r0 * r0, torch.exp2(-9.28 * n_dot_v)) * r0 + r1
    return a004 * -1.04 + r2, a004 * 1.04 + r3


def perturb_normal(normal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Tilt unit normals [..., 3] by a world-space offset [..., 3]: the offset's component along the normal is
    removed (a pure tilt, like a tangent-space normal map), then the sum is renormalised."""
    tangential = offset - (offset * normal).sum(-1, keepdim=True) * normal
    return F.normalize(normal + tangential, dim=-1, eps=1e-12)


def _f0(albedo: torch.Tensor, metallic: torch.Tensor) -> torch.Tensor:
    return 0.04 * (1 - metallic) + albedo * metallic


def shade_point_light(albedo: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor, normal: torch.Tensor,
                      points: torch.Tensor, camera_pos: torch.Tensor, light_pos: torch.Tensor, ambient: float = 0.3,
                      light_intensity: float = 2.2) -> torch.Tensor:
    """Cook-Torrance GGX shading under one point light plus ambient (see the module docstring for the formula).

    albedo [..., 3]; roughness, metallic [..., 1] in [0, 1]; normal [..., 3] unit; points, camera_pos, light_pos
    [..., 3] world positions (broadcastable). Returns rgb [..., 3] (not clamped)."""
    v = F.normalize(camera_pos - points, dim=-1, eps=1e-12)
    l = F.normalize(light_pos - points, dim=-1, eps=1e-12)
    h = F.normalize(l + v, dim=-1, eps=1e-12)
    n_dot_l = (normal * l).sum(-1, keepdim=True).clamp_min(0.0)
    n_dot_v = (normal * v).sum(-1, keepdim=True).clamp_min(1e-4)
    n_dot_h = (normal * h).sum(-1, keepdim=True).clamp_min(0.0)
    v_dot_h = (v * h).sum(-1, keepdim=True).clamp_min(0.0)
    rough = roughness.clamp(0.02, 1.0)  # α → 0 makes D a delta; keep highlights finite
    fres = fresnel_schlick(_f0(albedo, metallic), v_dot_h)
    spec = ggx_distribution(n_dot_h, rough) * fres * smith_schlick_g(n_dot_l, n_dot_v, rough) \
        / (4 * n_dot_l * n_dot_v).clamp_min(1e-4)
    kd = (1 - fres) * (1 - metallic)
    return ambient * albedo + light_intensity * n_dot_l * (kd * albedo / math.pi + spec)


def shade_envmap(albedo: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor, normal: torch.Tensor,
                 points: torch.Tensor, camera_pos: torch.Tensor, env_sh: torch.Tensor) -> torch.Tensor:
    """Image-based lighting by an SH environment [9, 3]: diffuse = (1 − metallic)·albedo·E(n)/π with the SH
    irradiance E; specular = prefiltered radiance along reflect(−v, n) × (F0·A + B) (Karis's split sum with his
    analytic environment BRDF). Shapes as :func:`shade_point_light`. Returns rgb [..., 3]."""
    v = F.normalize(camera_pos - points, dim=-1, eps=1e-12)
    n_dot_v = (normal * v).sum(-1, keepdim=True).clamp_min(1e-4)
    reflected = F.normalize(2 * n_dot_v * normal - v, dim=-1, eps=1e-12)
    diffuse = (1 - metallic) * albedo * sh_irradiance(normal, env_sh).clamp_min(0) / math.pi
    a, b = env_brdf_approx(n_dot_v, roughness.clamp(0, 1))
    specular = sh_prefiltered_radiance(reflected, env_sh, roughness).clamp_min(0) * (_f0(albedo, metallic) * a + b)
    return diffuse + specular


def shade(mode: str, cfg: MaterialConfig, albedo: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor,
          normal: torch.Tensor, points: torch.Tensor, camera_pos: torch.Tensor,
          light_pos: Optional[torch.Tensor] = None, env_sh: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One of :data:`SHADING_MODES` for per-point attributes: ``albedo`` returns albedo; ``textureless`` shades a
    constant ``textureless_albedo`` (non-metallic); ``shaded`` shades the material. Lighting per ``cfg.lighting``."""
    if mode == "albedo":
        return albedo
    if mode == "textureless":
        albedo = torch.full_like(albedo, float(cfg.textureless_albedo))
        metallic = torch.zeros_like(metallic)
    elif mode != "shaded":
        raise ValueError(f"unknown shading mode {mode!r} — one of {SHADING_MODES}")
    if cfg.lighting == "envmap":
        sh = env_sh if env_sh is not None else environment_sh(cfg)
        return shade_envmap(albedo, roughness, metallic, normal, points, camera_pos, sh.to(albedo))
    if light_pos is None:
        light_pos = camera_pos
    return shade_point_light(albedo, roughness, metallic, normal, points, camera_pos, light_pos,
                             float(cfg.ambient), float(cfg.light_intensity))


def check_material_config(cfg: MaterialConfig) -> None:
    from ..errors import ConfigError

    probs = list(cfg.mode_probs)
    if len(probs) != 3 or any(p < 0 for p in probs) or sum(probs) <= 0:
        raise ConfigError(f"representation.material.mode_probs={probs} — three probabilities ≥ 0 for "
                          "[albedo, textureless, shaded], not all zero")
    if cfg.lighting not in ("point", "envmap"):
        raise ConfigError(f"representation.material.lighting={cfg.lighting!r} — use point or envmap")
    if len(cfg.light_distance_range) != 2:
        raise ConfigError("representation.material.light_distance_range must be [low, high]")
    environment_sh(cfg)


def sample_shading_mode(probs: Sequence[float], generator: torch.Generator) -> str:
    """Draw one of :data:`SHADING_MODES` with probabilities ``probs`` (renormalised) from ``generator``. A mode of
    probability 1 is returned without drawing (so albedo-only recipes consume no random numbers)."""
    p = torch.tensor([float(x) for x in probs], dtype=torch.float64)
    p = p / p.sum()
    if float(p.max()) == 1.0:
        return SHADING_MODES[int(p.argmax())]
    return SHADING_MODES[int(torch.multinomial(p, 1, generator=generator))]


def sample_light_positions(camera_pos: torch.Tensor, generator: torch.Generator, jitter: float = 0.5,
                           distance_range: Sequence[float] = (2.0, 4.0)) -> torch.Tensor:
    """Light positions [B, 3] around the cameras [B, 3] (DreamFusion samples the light near the camera): the
    camera's direction from the origin plus Gaussian noise of std ``jitter``, renormalised, at a uniform distance
    in ``distance_range``."""
    B = camera_pos.shape[0]
    noise = torch.randn(B, 3, generator=generator) * float(jitter)
    dist = torch.rand(B, 1, generator=generator) * (distance_range[1] - distance_range[0]) + distance_range[0]
    direction = F.normalize(F.normalize(camera_pos.detach().cpu().float(), dim=-1) + noise, dim=-1)
    return (direction * dist).to(camera_pos)
