"""The live viewer (viser): ``dreamkit fit ... viewer=true`` and ``dreamkit view <run>`` (docs/viewer.md).

``server`` holds the viser page and the viser → dreamkit camera conversion, ``live`` the training callback (needs
PyTorch Lightning), ``view`` the viewer of a run folder. viser itself is optional (``pip install -e ".[viewer]"``)
and imported only when a viewer starts.
"""
from .server import VIEWER_INSTALL, cameras_from_viser, import_viser, render_size

__all__ = ["VIEWER_INSTALL", "cameras_from_viser", "import_viser", "render_size"]
