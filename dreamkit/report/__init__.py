"""``dreamkit report``: self-contained HTML pages of runs, eval folders and folders of runs (docs/report.md).

:func:`write_report` is the command; ``build`` holds the pages, ``plots`` the matplotlib figures, ``metrics`` the
reader of a run's logged metrics (shared with ``dreamkit view``). ``assets/`` carries the vendored
``<model-viewer>`` script (Apache-2.0, see ``assets/NOTICE``).
"""
from .build import write_report

__all__ = ["write_report"]
