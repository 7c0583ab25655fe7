"""Representations: NeRF, 3D Gaussians, triplane, DMTet / mesh, their 4D versions, and particles of any."""
from typing import Any


def canonical_time(model: Any) -> float:
    """τ_c of a 4D model: ``representation.canonical_time`` where it has one, else 0."""
    return float(getattr(model, "canonical_time", 0.0))


def canonical_scene(model: Any) -> Any:
    """The static scene that exports and the eval take of a model: a 4D model frozen at its canonical time
    (:func:`canonical_time`); a static model itself."""
    if not getattr(model, "dynamic", False):
        return model
    return model.at_time(canonical_time(model))
