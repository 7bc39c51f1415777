"""Where the server's non-Python files are: the web templates and static files, the alembic
migration scripts.

They live at the repository root (``web/``, ``alembic/``). A wheel carries them inside this package
as ``server/_web`` and ``server/_alembic`` (the ``package-dir`` mapping in ``pyproject.toml``); an
editable install (``pip install -e``) or a plain checkout leaves them at the root, next to
``server/``. The installed copy wins when both exist. tests/test_distribution.py checks the wheel.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(installed: str, checkout: str) -> Path:
    """``server/<installed>`` in an installed wheel, else ``<checkout root>/<checkout>``."""
    packaged = _PACKAGE / installed
    return packaged if packaged.is_dir() else _PACKAGE.parent / checkout


WEB_ROOT = _data_dir("_web", "web")
TEMPLATES_DIR = WEB_ROOT / "templates"
STATIC_DIR = WEB_ROOT / "static"

ALEMBIC_DIR = _data_dir("_alembic", "alembic")
"""The alembic script directory: ``env.py``, ``script.py.mako``, ``versions/``."""
