"""Loader of the CUDA z-buffer kernel of the triangle rasterizer (``custom_ops/raster``).

The kernel (``raster.cu``, binding ``raster.cpp``) is compiled on first use with
:func:`torch.utils.cpp_extension.load` into ``$TORCH_EXTENSIONS_DIR`` when set, else
``~/.cache/dreamkit/custom_ops/<torch>-cu<cuda>``. It computes the same packed (depth, face) keys as the torch twin
(:func:`dreamkit.render.raster._zbuffer_torch`) from the same per-face table, so both agree bit for bit.

Nothing here is imported by ``import dreamkit``; :func:`dreamkit.render.raster.rasterize_mesh` imports this module
only when asked for a CUDA backend (``backend="cuda"``, or ``"auto"`` with CUDA tensors).
"""
from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..errors import DreamkitError

__all__ = ["CudaOpUnavailable", "available", "load", "source_dir", "zbuffer"]

_log = logging.getLogger("dreamkit")
_EXT_NAME = "dreamkit_raster_v1"  # bump when the sources change incompatibly
_SOURCES = ("raster.cpp", "raster.cu")

_module = None
_failure: Optional["CudaOpUnavailable"] = None
_warned = False


class CudaOpUnavailable(DreamkitError, RuntimeError):
    """The CUDA rasterizer cannot be used here; the message names what is missing and the fix."""


def source_dir() -> Path:
    """The folder holding ``raster.cu``: the repository's ``custom_ops/raster`` (source checkout), or
    ``dreamkit/_shipped/custom_ops/raster`` when a wheel ships the sources."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "custom_ops" / "raster", here.parents[1] / "_shipped" / "custom_ops" / "raster"]
    for folder in candidates:
        if all((folder / name).is_file() for name in _SOURCES):
            return folder
    raise CudaOpUnavailable(
        "the CUDA rasterizer sources (custom_ops/raster/raster.cu, raster.cpp) are not found next to dreamkit "
        f"(looked in {', '.join(str(c) for c in candidates)}); install dreamkit from a source checkout "
        "(`pip install -e .`) or use backend='torch'")


def _build_dir() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root) / _EXT_NAME
    tag = f"torch{torch.__version__.split('+')[0]}-cu{torch.version.cuda or 'none'}"
    return Path.home() / ".cache" / "dreamkit" / "custom_ops" / tag / _EXT_NAME


def _check_prerequisites() -> None:
    """Raise :class:`CudaOpUnavailable` for the first missing piece, cheapest checks first."""
    fallback = "or use backend='torch' (the pure-PyTorch twin, same results)"
    if torch.version.cuda is None:
        raise CudaOpUnavailable(
            f"this PyTorch ({torch.__version__}) is a CPU-only build: install a CUDA build of PyTorch "
            f"(https://pytorch.org/get-started/locally/) {fallback}")
    if not torch.cuda.is_available():
        raise CudaOpUnavailable(f"no CUDA device is visible to PyTorch (torch.cuda.is_available() is False) {fallback}")
    from torch.utils import cpp_extension

    cuda_home = cpp_extension.CUDA_HOME
    nvcc = Path(cuda_home, "bin", "nvcc") if cuda_home else None
    if nvcc is None or not nvcc.exists():
        raise CudaOpUnavailable(
            f"nvcc was not found (CUDA_HOME={cuda_home!r}): install the CUDA toolkit matching PyTorch's CUDA "
            f"{torch.version.cuda} and set CUDA_HOME to it, {fallback}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise CudaOpUnavailable(f"no C++ compiler ({compiler!r} is not on PATH): install g++ (e.g. "
                                f"`apt-get install g++`) or set CXX, {fallback}")
    if not cpp_extension.is_ninja_available():
        raise CudaOpUnavailable(f"ninja is not installed (PyTorch builds extensions with it): `pip install ninja`, "
                                f"{fallback}")


def load():
    """Build (first call; a minute or two) or load the extension module; cached for the process.

    Raises:
        CudaOpUnavailable: naming what is missing (CUDA build of torch, GPU, nvcc, compiler, ninja, sources) or
            the compiler's error, and the fix.
    """
    global _module, _failure
    if _module is not None:
        return _module
    if _failure is not None:
        raise _failure
    try:
        _check_prerequisites()
        src = source_dir()
        from torch.utils import cpp_extension

        build = _build_dir()
        build.mkdir(parents=True, exist_ok=True)
        try:
            _module = cpp_extension.load(
                name=_EXT_NAME,
                sources=[str(src / name) for name in _SOURCES],
                extra_include_paths=[str(src)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "--fmad=false"],
                build_directory=str(build),
                verbose=False,
            )
        except Exception as err:  # compiler or linker errors come as RuntimeError/OSError/ImportError
            raise CudaOpUnavailable(
                f"building the CUDA rasterizer in {build} failed: {str(err).strip()[-2000:]}\nCheck that nvcc "
                f"matches PyTorch's CUDA {torch.version.cuda} and supports your GPU, delete {build} to retry, or "
                "use backend='torch'") from err
    except CudaOpUnavailable as err:
        _failure = err
        raise
    return _module


def available(warn: bool = False) -> bool:
    """Whether the CUDA kernel can be used; with ``warn``, the first failure is logged and warned about once."""
    global _warned
    try:
        load()
        return True
    except CudaOpUnavailable as err:
        if warn and not _warned:
            _warned = True
            message = f"dreamkit: the CUDA rasterizer is unavailable, falling back to the torch twin (slower): {err}"
            _log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return False


def zbuffer(keys: torch.Tensor, table: torch.Tensor, first: torch.Tensor, total_pairs: int, width: int) -> None:
    """Fill ``keys`` [B·H·W] int64 in place from the face table of ``dreamkit.render.raster._face_table``."""
    ext = load()
    with torch.cuda.device(keys.device):
        stream = torch.cuda.current_stream(keys.device).cuda_stream
        ext.zbuffer(keys, table.contiguous(), first.contiguous(), int(total_pairs), int(width), int(stream))
