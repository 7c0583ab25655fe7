"""Where shipped assets (sample meshes, tiny prior weights, tet grids) live, installed or in a checkout."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from .errors import DreamkitError

__all__ = ["asset_path", "asset_roots", "available_assets"]


def asset_roots() -> list[Path]:
    """The asset folders searched, in order: the wheel's ``dreamkit/_shipped/assets``, then the repository's
    top-level ``assets/`` (a source checkout or an editable install)."""
    package_dir = Path(__file__).resolve().parent
    return [package_dir / "_shipped" / "assets", package_dir.parent / "assets"]


def available_assets() -> list[str]:
    """Relative paths of every file under the asset roots (sorted, duplicates merged)."""
    found = set()
    for root in asset_roots():
        if root.is_dir():
            found.update(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(found)


def asset_path(relative: Union[str, Path]) -> Path:
    """Resolve an asset: an existing path (absolute, or relative to the working directory) is returned as is;
    otherwise ``relative`` is looked up under :func:`asset_roots`.

    Raises:
        DreamkitError: naming the file and listing the available assets when it is found nowhere.
    """
    path = Path(relative).expanduser()
    if path.exists():
        return path
    if not path.is_absolute():
        for root in asset_roots():
            candidate = root / path
            if candidate.exists():
                return candidate
    available = available_assets()
    listing = ", ".join(available) if available else "none (run scripts/make_assets.py in a checkout)"
    raise DreamkitError(
        f"asset {str(relative)!r} not found as a path nor under {', '.join(str(r) for r in asset_roots())}; "
        f"available assets: {listing}"
    )
