"""Real spherical harmonics for view-dependent colour, degrees 0..3, in the 3D Gaussian Splatting convention.

The basis and its ordering follow 3D Gaussian Splatting (Kerbl et al. 2023) and gsplat: coefficient ``k = l² + l + m``
holds band ``l``, order ``m`` (m = -l..l) of the real spherical harmonics *with* the Condon–Shortley phase, so the
degree-1 basis is ``(-c·y, c·z, -c·x)``. Colour is ``Σ_k Y_k(dir)·coeffs_k + 0.5``, clamped at 0, which makes a
degree-0 coefficient of 0 a mid-grey and lets :func:`rgb_to_sh0` / :func:`sh0_to_rgb` convert between the two.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SH_C0", "eval_sh", "sh_basis", "num_sh_bases", "rgb_to_sh0", "sh0_to_rgb"]

# Normalisation constants of the real spherical harmonics, sqrt((2l+1)/(4π)·(l-|m|)!/(l+|m|)!)·(√2 if m≠0) times the
# constant factor of each Cartesian polynomial below.
SH_C0 = 0.28209479177387814  # 1 / (2·sqrt(π))
SH_C1 = 0.4886025119029199  # sqrt(3 / (4π))
SH_C2 = (
    1.0925484305920792,  # xy
    -1.0925484305920792,  # yz
    0.31539156525252005,  # 2z² - x² - y²
    -1.0925484305920792,  # xz
    0.5462742152960396,  # x² - y²
)
SH_C3 = (
    -0.5900435899266435,  # y(3x² - y²)
    2.890611442640554,  # xyz
    -0.4570457994644658,  # y(4z² - x² - y²)
    0.3731763325901154,  # z(2z² - 3x² - 3y²)
    -0.4570457994644658,  # x(4z² - x² - y²)
    1.445305721320277,  # z(x² - y²)
    -0.5900435899266435,  # x(x² - 3y²)
)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients of the bands 0..degree: (degree + 1)²."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """The real SH basis evaluated at unit directions.

    Args:
        degree: 0..3.
        dirs: [..., 3] unit vectors.

    Returns:
        [..., (degree + 1)²] basis values in the 3DGS ordering.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"spherical harmonics degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        bases += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        bases += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        bases += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(bases, dim=-1)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """View-dependent RGB from SH coefficients, as 3D Gaussian Splatting: ``max(Σ_k Y_k(dir)·c_k + 0.5, 0)``.

    Args:
        degree: active degree, 0..3; only the first (degree + 1)² coefficients are used.
        coeffs: [..., K, 3] with K = (max_degree + 1)² ≥ (degree + 1)².
        dirs: [..., 3] unit view directions, from the camera centre towards the Gaussian (broadcast against coeffs'
            leading dims, e.g. coeffs [N, K, 3] with dirs [B, N, 3] gives [B, N, 3]).

    Returns:
        [..., 3] colours, ≥ 0 (not clamped above).
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"degree {degree} needs {k} SH coefficients, got {coeffs.shape[-2]}")
    if degree == 0:
        # The direction does not matter; skip the basis so that dirs need not even be valid.
        rgb = SH_C0 * coeffs[..., 0, :]
        rgb = rgb.expand(torch.broadcast_shapes(rgb.shape, dirs.shape))
    else:
        basis = sh_basis(degree, dirs)  # [..., k]
        rgb = (basis.unsqueeze(-1) * coeffs[..., :k, :]).sum(dim=-2)
    return torch.clamp_min(rgb + 0.5, 0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """[..., 3] RGB → the degree-0 coefficient [..., 3] that reproduces it (before the clamp)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """[..., 3] degree-0 coefficient → RGB [..., 3] (no clamp; inverse of :func:`rgb_to_sh0`)."""
    return sh0 * SH_C0 + 0.5
