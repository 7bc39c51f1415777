"""The server's secret key files (``signing-key.pem``, ``inputs.key``): created crash-safely on
first use, checked on every load.

Creation (:func:`load_or_create`): the key is written to a temporary file in the same directory
(created ``O_EXCL`` with mode 0600, so it is never readable by anyone else, not even briefly),
fsynced, then hard-linked to its final name with ``os.link``, which fails when that name exists;
then the directory is fsynced and the temporary name removed. So the key file either does not
exist or holds a complete key: a crash in between leaves at most a stray temporary file
(``.<name>.<random>.tmp``, ignored), and the next start simply creates the key. When two
processes create the key at once, the one whose link fails lost the race and reads the winner's.

Loading: a key file that group or others can access is refused (ConfigError naming the file and
the ``chmod 600`` fix), and so is an EMPTY one. Such a file cannot come from this module; it is
what the earlier ``O_EXCL``-then-write creation left behind when it crashed in between, or a file
truncated since. It is not silently replaced: if the key was ever used, agents (signing key) or
stored answers (inputs key) depend on it. The message says what deleting it means.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from server.errors import ConfigError

log = logging.getLogger(__name__)

MODE = 0o600


def check_private(path: Path, what: str) -> None:
    """ConfigError naming ``path`` and the fix when group or others may access it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    if mode & 0o077:
        raise ConfigError(
            f"{path}: {what} is accessible by group or others (mode {mode:04o}); restrict it "
            f"with `chmod 600 {path}` (and check who may have copied it)"
        )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, content: bytes) -> bool:
    """Put ``content`` at ``path`` unless a file is there already (see the module docstring).
    True when this call created it, False when another process won the race."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.link(temp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def load_or_create(path: Path, what: str, generate: Callable[[], bytes], if_lost: str) -> bytes:
    """The bytes of the key file ``path``, created from ``generate()`` (and logged) when it
    does not exist. ``what`` names the key in messages ("the server signing key"); ``if_lost``
    says what replacing it means, for the empty-file message. ConfigError when the file cannot
    be created or read, is accessible by group or others, or is empty."""
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if _create(path, generate()):
                log.info("created %s %s (mode 0600)", what, path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create {what}: {exc}") from exc
    check_private(path, what)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    if not content.strip():
        raise ConfigError(
            f"{path}: {what} file is empty (a crash while an older version created it, or the "
            f"file was truncated). Restore it from a backup; or, if no key was ever in it, "
            f"delete it and start again to create a new one ({if_lost})"
        )
    return content
