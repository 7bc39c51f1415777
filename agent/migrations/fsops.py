"""Durable file operations: atomic writes, removals, checksummed backups and their restore.

Every write is: temp file in the same directory (created with the target's mode) + fsync +
rename over the target + fsync of the directory, so a crash leaves the old or the new file,
never a torn one. Backups hold copies of config files that may contain secrets: the backup dir
is 0700 and each copy 0600; the manifest records the original mode, which restore puts back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import AgentError

TEMP_MARK = ".flagpost-tmp"
MANIFEST_NAME = "manifest.json"
# Beside the manifest once a run committed: what the run left in each file it may touch (see
# :func:`record_after`), so a later revert can tell whether a file changed since.
AFTER_NAME = "after.json"


class BackupError(AgentError):
    """A backup could not be made or did not verify."""


class RollbackError(AgentError):
    """Restoring from a backup failed for at least one file (the message lists each)."""


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink in it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TEMP_MARK}")


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, each made durable in its parent."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` and permission bits ``mode``; durable when it returns.

    The temp file is created with ``mode`` (then fchmod'ed, past the umask), so a 0600 file is
    never readable by others, not even briefly.
    """
    temp = _temp_path(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def remove_file(path: Path) -> bool:
    """Unlink ``path`` durably; False if it did not exist."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def remove_temp_files(paths: Iterable[Path]) -> list[Path]:
    """Remove leftover temp files of interrupted atomic writes next to ``paths``."""
    removed: list[Path] = []
    for path in paths:
        if not path.parent.is_dir():
            continue
        for temp in path.parent.glob(f".{path.name}.*{TEMP_MARK}"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
                removed.append(temp)
    return removed


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class BackupEntry:
    """One file the run may touch; ``existed`` False: absent before the run (rollback deletes)."""

    original_path: str
    existed: bool
    backup_name: str = ""
    sha256: str = ""
    mode: int = 0
    size: int = 0


@dataclass(frozen=True, slots=True)
class Manifest:
    """The backup of one run: ``backup_dir/manifest.json`` plus ``backup_dir/files/*``.

    The manifest lists, for each saved file, original path, backup name, SHA-256, mode and size.
    """

    run_id: str
    created_at: str
    entries: tuple[BackupEntry, ...]
    # Directories that did not exist before the run, deepest first (rollback removes them if
    # they are empty).
    missing_dirs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``files``: the saved copies (``backup_name`` is relative to the backup dir);
        ``absent``: paths that did not exist (a rollback deletes them)."""
        return {
            "run_id": self.run_id,
            "created_at": self.created_at,
            "files": [
                {k: v for k, v in asdict(entry).items() if k != "existed"}
                for entry in self.entries
                if entry.existed
            ],
            "absent": [entry.original_path for entry in self.entries if not entry.existed],
            "missing_dirs": list(self.missing_dirs),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            run_id=str(data["run_id"]),
            created_at=str(data["created_at"]),
            entries=(
                *(BackupEntry(existed=True, **entry) for entry in data["files"]),
                *(BackupEntry(original_path=str(path), existed=False) for path in data["absent"]),
            ),
            missing_dirs=tuple(data.get("missing_dirs", ())),
        )


def load_manifest(backup_dir: Path) -> Manifest:
    """Read ``backup_dir/manifest.json``."""
    return Manifest.from_json(json.loads((backup_dir / MANIFEST_NAME).read_text("utf-8")))


def create_backup(paths: Iterable[Path], backup_dir: Path, run_id: str) -> Manifest:
    """Copy every existing file of ``paths`` into the NEW directory ``backup_dir`` (it must not
    exist: one backup per run), verify each copy's SHA-256 against the original, and write the
    manifest. Raises :class:`BackupError` on a checksum mismatch, OSError on I/O errors."""
    backup_dir.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(backup_dir, 0o700)
    files_dir = backup_dir / "files"
    os.mkdir(files_dir, 0o700)
    entries: list[BackupEntry] = []
    for index, path in enumerate(paths):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            entries.append(BackupEntry(original_path=str(path), existed=False))
            continue
        data = path.read_bytes()
        name = f"files/{index:03d}_{path.name}"
        atomic_write(backup_dir / name, data, 0o600)
        original_sum = sha256_bytes(data)
        if sha256_file(backup_dir / name) != original_sum or sha256_file(path) != original_sum:
            raise BackupError(f"backup of {path} does not match the original (checksum)")
        entries.append(
            BackupEntry(
                original_path=str(path),
                existed=True,
                backup_name=name,
                sha256=original_sum,
                mode=stat.S_IMODE(info.st_mode),
                size=len(data),
            )
        )
    missing: dict[Path, None] = {}
    for entry in entries:
        parent = Path(entry.original_path).parent
        while not parent.exists():
            missing[parent] = None
            parent = parent.parent
    missing_dirs = tuple(str(d) for d in sorted(missing, key=lambda d: len(d.parts), reverse=True))
    manifest = Manifest(run_id, datetime.now(UTC).isoformat(), tuple(entries), missing_dirs)
    atomic_write(
        backup_dir / MANIFEST_NAME,
        (json.dumps(manifest.to_json(), indent=2) + "\n").encode("utf-8"),
        0o600,
    )
    fsync_dir(backup_dir.parent)
    return manifest


def _matches(path: Path, entry: BackupEntry) -> bool:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    return stat.S_IMODE(info.st_mode) == entry.mode and sha256_file(path) == entry.sha256


def restore_backup(manifest: Manifest, backup_dir: Path) -> None:
    """Put every file back as the manifest recorded it: restore changed or removed files from
    their (checksum-verified) copies with their original mode, delete files the run created,
    remove temp leftovers. Idempotent. Raises :class:`RollbackError` naming each failure."""
    failures: list[str] = []
    for entry in manifest.entries:
        path = Path(entry.original_path)
        try:
            if not entry.existed:
                # Only if the run made it: unlink fails with EROFS on a read-only mount even
                # for a name that is not there, and the run may have failed there.
                if os.path.lexists(path):
                    remove_file(path)
                continue
            if _matches(path, entry):
                continue
            data = (backup_dir / entry.backup_name).read_bytes()
            if sha256_bytes(data) != entry.sha256:
                raise RollbackError(f"backup copy {entry.backup_name} is corrupt (checksum)")
            atomic_write(path, data, entry.mode)
        except (OSError, RollbackError) as exc:
            failures.append(f"{path}: {exc}")
    try:
        remove_temp_files(Path(entry.original_path) for entry in manifest.entries)
    except OSError as exc:
        failures.append(f"temp files: {exc}")
    for directory in manifest.missing_dirs:
        try:
            os.rmdir(directory)
        except (FileNotFoundError, OSError) as exc:
            if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOTEMPTY:
                continue
            failures.append(f"{directory}: {exc}")
    if failures:
        raise RollbackError("; ".join(failures))


@dataclass(frozen=True, slots=True)
class AfterEntry:
    """One file as a finished run left it: ``exists`` False means the run left it absent."""

    path: str
    exists: bool
    sha256: str = ""
    mode: int = 0


@dataclass(frozen=True, slots=True)
class AfterState:
    """``backup_dir/after.json``: the migration, its versions and each touched file's state."""

    run_id: str
    migration_id: str
    from_version: str
    to_version: str
    entries: tuple[AfterEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "migration_id": self.migration_id,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "files": [asdict(entry) for entry in self.entries],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AfterState:
        return cls(
            run_id=str(data["run_id"]),
            migration_id=str(data["migration_id"]),
            from_version=str(data["from_version"]),
            to_version=str(data["to_version"]),
            entries=tuple(AfterEntry(**entry) for entry in data["files"]),
        )


def file_state(path: Path) -> AfterEntry:
    """``path`` as it is now (content checksum and permission bits, or absent)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return AfterEntry(str(path), exists=False)
    return AfterEntry(str(path), True, sha256_file(path), stat.S_IMODE(info.st_mode))


def record_after(
    backup_dir: Path,
    paths: Iterable[Path],
    *,
    run_id: str,
    migration_id: str,
    from_version: str,
    to_version: str,
) -> AfterState:
    """Write ``backup_dir/after.json`` (0600): the state of each of ``paths`` now."""
    after = AfterState(
        run_id, migration_id, from_version, to_version, tuple(file_state(p) for p in paths)
    )
    atomic_write(
        backup_dir / AFTER_NAME,
        (json.dumps(after.to_json(), indent=2) + "\n").encode("utf-8"),
        0o600,
    )
    return after


def load_after(backup_dir: Path) -> AfterState:
    """Read ``backup_dir/after.json`` (OSError if there is none: the run did not commit)."""
    return AfterState.from_json(json.loads((backup_dir / AFTER_NAME).read_text("utf-8")))
