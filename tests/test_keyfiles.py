"""The server's key files (signing key, inputs key) share one crash-safe creation and one set of
load checks (``server.keyfiles``): a crash while creating leaves no half-written key, racing
processes end up with the same key, an empty or group/other-accessible file stops the start."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from server import keyfiles
from server.errors import ConfigError
from server.services.inputs import KEY_FILE, load_or_create_key
from server.signing import KEY_FILE_NAME, load_or_create


def load_signing(state: Path) -> bytes:
    return load_or_create(state).public_key_bytes()


def load_inputs(state: Path) -> bytes:
    return load_or_create_key(state / KEY_FILE)


LOADERS: list[tuple[str, Callable[[Path], bytes], str]] = [
    ("signing", load_signing, KEY_FILE_NAME),
    ("inputs", load_inputs, KEY_FILE),
]
CRASH = """
import os, sys
from pathlib import Path

def crash(*args, **kwargs):
    os._exit(9)  # the process dies here: nothing after it runs, no cleanup

setattr(os, sys.argv[2], crash)
if sys.argv[3] == "signing":
    from server.signing import load_or_create
    load_or_create(Path(sys.argv[1]))
else:
    from server.services.inputs import KEY_FILE, load_or_create_key
    load_or_create_key(Path(sys.argv[1]) / KEY_FILE)
"""


@pytest.mark.parametrize(("kind", "load", "name"), LOADERS)
@pytest.mark.parametrize("crash_at", ["fsync", "link"])
def test_a_crash_while_creating_leaves_no_key_file_and_the_next_start_creates_it(
    tmp_path: Path, kind: str, load: Callable[[Path], bytes], name: str, crash_at: str
) -> None:
    state = tmp_path / "state"
    child = subprocess.run(
        [sys.executable, "-c", CRASH, str(state), crash_at, kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 9, child.stderr
    assert not (state / name).exists()  # never a half-written key under the real name
    strays = [p for p in state.iterdir() if p.name.endswith(".tmp")]
    assert len(strays) == 1 and oct(strays[0].stat().st_mode & 0o777) == "0o600"
    key = load(state)  # the next start: a fresh, complete key
    assert key and load(state) == key
    assert oct((state / name).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(("kind", "load", "name"), LOADERS)
def test_processes_racing_to_create_the_key_all_get_the_same_one(
    tmp_path: Path, kind: str, load: Callable[[Path], bytes], name: str
) -> None:
    state = tmp_path / "state"
    barrier = threading.Barrier(8)
    keys: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            keys.append(load(state))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(keys) == 8 and len(set(keys)) == 1
    assert sorted(p.name for p in state.iterdir()) == [name]  # no temporary file left


@pytest.mark.parametrize(("kind", "load", "name"), LOADERS)
def test_an_empty_key_file_is_refused_naming_it(
    tmp_path: Path, kind: str, load: Callable[[Path], bytes], name: str
) -> None:
    """What the earlier O_EXCL-then-write creation left after a crash: refused, not replaced
    (agents may have pinned the key, answers may be encrypted with it)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / name).touch(mode=0o600)
    with pytest.raises(ConfigError) as caught:
        load(state)
    message = caught.value.message
    assert str(state / name) in message and "is empty" in message
    assert "delete it" in message and "restore it from a backup" in message.lower()
    if kind == "signing":
        assert "every agent must be enrolled again" in message
    else:
        assert "answer those prompts again" in message
    assert (state / name).read_bytes() == b""  # left alone
    (state / name).unlink()  # what the message says to do
    assert load(state)


@pytest.mark.parametrize(("kind", "load", "name"), LOADERS)
def test_a_key_file_others_can_access_is_refused_by_both_loaders(
    tmp_path: Path, kind: str, load: Callable[[Path], bytes], name: str
) -> None:
    state = tmp_path / "state"
    load(state)
    for mode in (0o640, 0o604, 0o620):
        (state / name).chmod(mode)
        with pytest.raises(ConfigError) as caught:
            load(state)
        message = caught.value.message
        assert str(state / name) in message and f"chmod 600 {state / name}" in message
        assert f"mode {mode:04o}" in message


def test_the_helper_keeps_what_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "k.key"
    key = Fernet.generate_key()
    assert keyfiles.load_or_create(path, "a test key", lambda: key, "nothing") == key
    assert keyfiles.load_or_create(path, "a test key", Fernet.generate_key, "nothing") == key
