"""Shared pytest fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline (ε-prediction) in diffusers format, built once per test session."""
    from dreamkit.priors.tiny_random import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))
