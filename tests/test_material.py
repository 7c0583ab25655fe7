"""PBR shading (dreamkit.render.material) against hand-worked values and analytic integrals."""
from __future__ import annotations

import math

import pytest
import torch

from dreamkit.render.material import (MaterialConfig, env_brdf_approx, perturb_normal, sample_shading_mode, shade,
                                      shade_point_light, sh_irradiance, sh_prefiltered_radiance,
                                      sky_environment_sh)


def test_point_light_one_pixel_matches_hand_worked_formula():
    # normal, view and light all along +z: n·l = n·v = n·h = v·h = 1
    albedo = torch.tensor([[0.5, 0.2, 0.1]])
    rough, metal = torch.tensor([[0.5]]), torch.tensor([[0.0]])
    out = shade_point_light(albedo, rough, metal, torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1, 3),
                            torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[0.0, 0.0, 3.0]]), ambient=0.3,
                            light_intensity=2.2)
    # by hand: α = r² = 0.25; D = α²/(π(α² − 1 + 1)²) = 1/(π α²) = 1/(0.0625 π); F = F0 = 0.04 (v·h = 1);
    # k = (0.5 + 1)²/8, G1(1) = 1/(1 − k + k) = 1; f_s = D·F·G/(4·1·1); k_d = 1 − F = 0.96
    D = 1 / (0.0625 * math.pi)
    f_s = D * 0.04 / 4
    expected = [0.3 * a + 2.2 * (0.96 * a / math.pi + f_s) for a in (0.5, 0.2, 0.1)]
    torch.testing.assert_close(out[0], torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_point_light_metal_and_grazing_light():
    # a fully metallic surface has no diffuse part: with the light behind the surface only ambient remains
    albedo = torch.tensor([[0.9, 0.6, 0.3]])
    n = torch.tensor([[0.0, 1.0, 0.0]])
    out = shade_point_light(albedo, torch.tensor([[0.4]]), torch.tensor([[1.0]]), n, torch.zeros(1, 3),
                            torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[0.0, -2.0, 0.0]]), ambient=0.25)
    torch.testing.assert_close(out, 0.25 * albedo)


def test_sh_irradiance_matches_analytic_integrals():
    # constant radiance c: E(n) = π c for every normal (∫ c cosθ dω over the hemisphere)
    c = torch.tensor([0.2, 0.5, 1.0])
    const = sky_environment_sh(c.tolist(), c.tolist())
    normals = torch.nn.functional.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    torch.testing.assert_close(sh_irradiance(normals, const), (math.pi * c).expand(16, 3), atol=1e-5, rtol=1e-5)
    # L(ω) = m + d·ω_y: facing up E = π m + 2π d/3, facing down π m − 2π d/3, sideways π m
    sky, ground = torch.tensor([1.0, 0.9, 0.8]), torch.tensor([0.2, 0.3, 0.1])
    m, d = (sky + ground) / 2, (sky - ground) / 2
    sh = sky_environment_sh(sky.tolist(), ground.tolist())
    dirs = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = torch.stack([math.pi * m + 2 * math.pi * d / 3, math.pi * m - 2 * math.pi * d / 3, math.pi * m])
    torch.testing.assert_close(sh_irradiance(dirs, sh), expected, atol=1e-5, rtol=1e-5)
    # a mirror (roughness 0) sees the radiance itself: m + d·y
    torch.testing.assert_close(sh_prefiltered_radiance(dirs, sh, torch.zeros(3, 1)),
                               torch.stack([sky, ground, m]), atol=1e-5, rtol=1e-5)


def test_env_brdf_approximation_values():
    # Karis's fit at roughness 0 and normal incidence: a004 = min(1, 2^-9.28) + 0.0425
    a004 = 2 ** -9.28 + 0.0425
    A, B = env_brdf_approx(torch.tensor([[1.0]]), torch.tensor([[0.0]]))
    assert A.item() == pytest.approx(1.04 - 1.04 * a004, abs=1e-6)
    assert B.item() == pytest.approx(1.04 * a004 - 0.04, abs=1e-6)
    assert A.item() + B.item() == pytest.approx(1.0, abs=0.01)  # a white mirror reflects everything


def test_shading_modes_and_envmap():
    cfg = MaterialConfig(lighting="envmap")
    albedo = torch.tensor([[0.6, 0.3, 0.2]])
    args = (torch.tensor([[0.8]]), torch.tensor([[0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.zeros(1, 3),
            torch.tensor([[0.0, 2.0, 1.0]]))
    torch.testing.assert_close(shade("albedo", cfg, albedo, *args), albedo)
    textureless = shade("textureless", cfg, albedo, *args)
    assert torch.allclose(textureless[0, 0], textureless[0, 1], atol=0.05)  # grey-ish: white albedo, white-ish sky
    shaded = shade("shaded", cfg, albedo, *args)
    assert (shaded > 0).all() and shaded[0, 0] > shaded[0, 2]
    with pytest.raises(ValueError):
        shade("glossy", cfg, albedo, *args)


def test_sample_shading_mode_uses_the_generator_and_probabilities():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert sample_shading_mode([1, 0, 0], gen) == "albedo"
    assert torch.equal(gen.get_state(), state)  # a certain mode draws nothing
    draws = [sample_shading_mode([0.2, 0.3, 0.5], gen) for _ in range(2000)]
    assert abs(draws.count("shaded") / 2000 - 0.5) < 0.05
    assert abs(draws.count("albedo") / 2000 - 0.2) < 0.05
    again = torch.Generator().manual_seed(0)
    assert [sample_shading_mode([0.2, 0.3, 0.5], again) for _ in range(2000)] == draws


def test_perturb_normal_is_a_tilt():
    n = torch.tensor([[0.0, 0.0, 1.0]])
    torch.testing.assert_close(perturb_normal(n, torch.tensor([[0.0, 0.0, 5.0]])), n)
    tilted = perturb_normal(n, torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(tilted, torch.tensor([[1.0, 0.0, 1.0]]) / math.sqrt(2))
