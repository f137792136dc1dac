"""Where packaged files live, in a source checkout and in an installed wheel alike."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def assets_dir() -> Path:
    """The app's ``assets/`` folder: ``viewer/assets`` in a wheel (pyproject maps the top-level
    ``assets/`` there), the repository's ``assets/`` in a source or editable checkout."""
    for cand in (_HERE / "assets", _HERE.parent / "assets"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("DepView's assets folder is missing from this installation")
