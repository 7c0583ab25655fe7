"""Shared pytest fixtures."""
from __future__ import annotations

import os
import tempfile

import pytest

# gsplat/nerfacc compile CUDA on first use; keep any build folder they leave out of the user's cache
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "dreamkit_test_torch_extensions"))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline (ε-prediction) in diffusers format, built once per test session."""
    from dreamkit.priors.tiny_random import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory):
    """A tiny random pixel-space prior (the embedded priors' layout, MiniLM text encoder)."""
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    return build_tiny_random_pixel_prior(tmp_path_factory.mktemp("tiny_pixel"), world_captions=["a red cube"])
