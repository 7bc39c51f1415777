"""Answers to a waiting run's input request (issue 6): checked, kept encrypted, delivered once.

An AWAITING_INPUT run asks for inputs (``InputRequest``: names, labels, which are secret). An
admin answers every field at once (:meth:`InputVault.submit_answers`); the answers are encrypted
with the server's Fernet key (``<state_dir>/inputs.key``, created 0600 on first start; a key
file readable by group or others stops the server from starting) and stored in ``run_inputs``,
bound to the run and the request (both are inside the ciphertext and checked on decryption), and
a ``provide_input`` action is queued whose stored params are only ``run_id`` and
``request_id``. At delivery, :meth:`InputVault.reveal` decrypts and adds one ``input.<name>``
param per answer to an in-memory copy of the action, which the servicer signs and sends. When the
agent acknowledges the action, the ingest transaction deletes the ciphertext
(``server.storage.run_ingest``); so does a run that ends first. The database, logs, events, SSE
frames, pages and error messages never hold an answer: messages name fields and limits, never
values. Replicas sharing a PostgreSQL must share the key file (like the signing key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.config import ServerConfig
from server.domain import ActionKind, PendingAction, RunState
from server.errors import ConfigError, Conflict, InvalidArgument, NotFound
from server.services.health import unavailable_on_outage
from server.services.runs import _new_action
from server.storage import actions as actions_store
from server.storage import inputs as inputs_store
from server.storage import notify
from server.storage import runs as runs_store

log = logging.getLogger(__name__)

KEY_FILE = "inputs.key"
INPUT_PARAM_PREFIX = "input."
MAX_BY = 128


def load_or_create_key(path: Path) -> bytes:
    """The Fernet key in ``path``: created (``O_EXCL``, mode 0600, directory created) on first
    use. ConfigError, naming the file and the fix, when it is readable or writable by group or
    others, or not a valid key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, Fernet.generate_key() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("created the input encryption key %s (mode 0600)", path)
    try:
        mode = path.stat().st_mode
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the input encryption key {path}: {exc}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"the input encryption key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} does not hold a valid Fernet key") from None
    return key


def _plaintext(run_id: str, request_id: str, answers: Mapping[str, str]) -> bytes:
    return json.dumps(
        {"run_id": run_id, "request_id": request_id, "answers": dict(answers)},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")


def _by(by: str) -> str:
    by = by.strip()
    if not by or len(by) > MAX_BY or not by.isprintable():
        raise InvalidArgument(f"must be 1 to {MAX_BY} printable characters", field="by")
    return by


class InputVault:
    """The key and the operations on answers. One per server process (``Services.inputs``)."""

    def __init__(
        self,
        config: ServerConfig,
        sessions: async_sessionmaker[AsyncSession],
        key: bytes,
        path: Path,
    ) -> None:
        self._config = config
        self._sessions = sessions
        self._fernet = Fernet(key)
        self.path = path
        # What the server-key registry compares across replicas: an HMAC of a constant under
        # the key, which tells keys apart without revealing anything about them.
        self.key_id = hmac.new(key, b"flagpost inputs key id", hashlib.sha256).hexdigest()

    @classmethod
    def open(cls, config: ServerConfig, sessions: async_sessionmaker[AsyncSession]) -> InputVault:
        """Load (or on first start create) ``<state_dir>/inputs.key``; ConfigError when unsafe."""
        path = config.state_dir / KEY_FILE
        return cls(config, sessions, load_or_create_key(path), path)

    def _check_answers(self, fields: Sequence[str], answers: Mapping[str, Any]) -> dict[str, str]:
        limit = self._config.input_max_bytes
        asked = set(fields)
        for name in answers:
            if name not in asked:
                raise InvalidArgument(
                    "is not asked for by this request", field=f"inputs.{name}"[:80]
                )
        checked: dict[str, str] = {}
        for name in fields:
            value = answers.get(name)
            if value is None or value == "":
                raise InvalidArgument("is required: answer every field", field=f"inputs.{name}")
            if not isinstance(value, str):
                raise InvalidArgument("must be a string", field=f"inputs.{name}")
            size = len(value.encode("utf-8"))
            if size > limit:
                raise InvalidArgument(
                    f"is {size} bytes; at most {limit} allowed (input_max_bytes)",
                    field=f"inputs.{name}",
                )
            checked[name] = value
        return checked

    async def submit_answers(
        self, run_id: str, request_id: str, answers: Mapping[str, Any], by: str
    ) -> PendingAction:
        """Answer the run's current input request: every field, each at most
        ``input_max_bytes``. Encrypts and stores the answers, queues the ``provide_input``
        action (its stored params: ``run_id`` and ``request_id`` only) and records who answered
        and when. NotFound for an unknown run; Conflict when the run is not waiting, the form is
        stale (the agent asked again since) or answers for this request are already on their
        way; InvalidArgument naming the field that is missing, unknown or too long. The caller
        wakes this process's run streams (``EventBus.publish_runs``)."""
        by = _by(by)
        now = datetime.now(UTC)
        with unavailable_on_outage("submit inputs"):
            async with self._sessions() as session, session.begin():
                run = await runs_store.lock_run(session, run_id.lower())
                if run is None:
                    raise NotFound(f"no run {run_id}")
                request = run.input_request
                if run.state != RunState.AWAITING_INPUT or request is None:
                    raise Conflict(
                        f"run {run.id} is not waiting for input (it is {run.state.value})"
                    )
                if request_id.lower() != request.request_id:
                    raise Conflict(
                        f"the form is stale: run {run.id} asked again since "
                        f"(request {request.request_id}); reload the page and answer the new "
                        "request"
                    )
                stored = await inputs_store.get_answers(session, run.id, now)
                sent = (
                    stored.action_open and stored.request_id == request.request_id
                    if stored is not None
                    else run.input_answered  # delivered and acknowledged already
                )
                if sent:
                    raise Conflict(
                        f"answers to this request were already sent by {run.input_answered_by} "
                        "; waiting for the agent"
                    )
                checked = self._check_answers([f.name for f in request.fields], answers)
                action = _new_action(
                    self._config,
                    run.agent_id,
                    ActionKind.PROVIDE_INPUT,
                    {"run_id": run.id, "request_id": request.request_id},
                    by,
                    now,
                )
                ciphertext = self._fernet.encrypt(_plaintext(run.id, request.request_id, checked))
                await actions_store.create_action(session, action)
                await inputs_store.store_answers(
                    session, run.id, request.request_id, action.action_id, ciphertext, by, now
                )
                await notify.announce_runs_changed(session, [run.id])
        log.info(
            "inputs for run %s (request %s, fields %s) answered by %s: action %s queued",
            run.id,
            request.request_id,
            ", ".join(checked),
            by,
            action.action_id,
        )
        return action

    async def reveal(self, actions: Sequence[PendingAction]) -> list[PendingAction]:
        """The actions to send, ``provide_input`` ones as in-memory copies carrying one
        ``input.<name>`` param per answer (for the servicer to sign; never stored). A
        ``provide_input`` action whose answers are gone (the run ended, acknowledged meanwhile)
        or cannot be decrypted (the key file was replaced) is left out."""
        wanted = [a.action_id for a in actions if a.kind == ActionKind.PROVIDE_INPUT]
        if not wanted:
            return list(actions)
        with unavailable_on_outage("read inputs"):
            async with self._sessions() as session:
                found = await inputs_store.ciphertexts(session, wanted)
        out: list[PendingAction] = []
        for action in actions:
            if action.kind != ActionKind.PROVIDE_INPUT:
                out.append(action)
                continue
            params = self._decrypt(action, found.get(action.action_id))
            if params is not None:
                out.append(dataclasses.replace(action, params=params))
        return out

    def _decrypt(self, action: PendingAction, stored: Any) -> dict[str, str] | None:
        run_id = action.params.get("run_id", "")
        request_id = action.params.get("request_id", "")
        if stored is None:
            log.info("action %s: no answers stored any more; not delivered", action.action_id)
            return None
        try:
            data = json.loads(self._fernet.decrypt(stored.ciphertext))
        except (InvalidToken, ValueError):
            log.error(
                "action %s: the answers cannot be decrypted with %s (was the key file "
                "replaced?); answer the run's prompt again",
                action.action_id,
                self._config.state_dir / KEY_FILE,
            )
            return None
        if (
            data.get("run_id") != run_id
            or data.get("request_id") != request_id
            or stored.run_id != run_id
            or stored.request_id != request_id
        ):
            log.error(
                "action %s: the stored answers belong to another run or request", action.action_id
            )
            return None
        params = dict(action.params)
        for name, value in data.get("answers", {}).items():
            params[INPUT_PARAM_PREFIX + str(name)] = str(value)
        return params


async def count_awaiting(sessions: async_sessionmaker[AsyncSession]) -> int:
    """How many runs wait for input (the page header's count)."""
    with unavailable_on_outage("count waiting runs"):
        async with sessions() as session:
            return await inputs_store.count_awaiting(session)


async def awaiting_among(
    sessions: async_sessionmaker[AsyncSession], run_ids: Sequence[str]
) -> set[str]:
    """Those of ``run_ids`` whose run waits for input (History row badges)."""
    if not run_ids:
        return set()
    with unavailable_on_outage("waiting runs"):
        async with sessions() as session:
            return await inputs_store.awaiting_among(session, run_ids)
