"""Answers to a waiting run's input request: checked, kept encrypted, delivered once.

An AWAITING_INPUT run asks for inputs (``InputRequest``: names, labels, which are secret). An
admin answers every field at once (:meth:`InputVault.submit_answers`); the answers are encrypted
with the server's Fernet key (``<state_dir>/inputs.key``, created 0600 on first start; a key
file readable by group or others, or an empty one, stops the server from starting) and stored
in ``run_inputs``, bound to the run and the request (both are inside the ciphertext and checked
on decryption), and a ``provide_input`` action is queued whose stored params are only
``run_id`` and ``request_id``. At delivery, :meth:`InputVault.reveal` decrypts and adds one
``input.<name>`` param per answer to an in-memory copy of the action, which the servicer signs and
sends. When the agent acknowledges the action, the ingest transaction deletes the ciphertext
(``server.storage.run_ingest``); so does a run that ends first. The database, logs, events, SSE
frames, pages and error messages never hold an answer: messages name fields and limits, never
values. Replicas sharing a PostgreSQL must share the key file (like the signing key).

Answers are refused (Conflict) while gRPC serves plain text on an address other than loopback:
the signed action body carrying them would be readable on the network.

If the agent refuses the answers (the action expired by its clock, a bad signature, the run no
longer waits for that request), it still acknowledges the action, which deletes the ciphertext;
when the run still waits for the same request after that check-in, the ingest transaction clears
the answered mark, so the prompt opens again and new answers are accepted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server import keyfiles
from server.config import ServerConfig
from server.domain import ActionKind, PendingAction, RunState
from server.errors import ConfigError, Conflict, InvalidArgument, NotFound
from server.services.bus import EventBus
from server.services.health import unavailable_on_outage
from server.services.runs import new_action, requester
from server.storage import actions as actions_store
from server.storage import inputs as inputs_store
from server.storage import notify
from server.storage import runs as runs_store
from server.tls import is_loopback

log = logging.getLogger(__name__)

KEY_FILE = "inputs.key"
INPUT_PARAM_PREFIX = "input."


def load_or_create_key(path: Path) -> bytes:
    """The Fernet key in ``path``: created (crash-safely, mode 0600, directory created) on first
    use (``server.keyfiles``). ConfigError, naming the file and the fix, when it is accessible
    by group or others, empty, or not a valid key."""
    key = keyfiles.load_or_create(
        path,
        "the input encryption key",
        lambda: Fernet.generate_key() + b"\n",
        "answers stored but not yet delivered can then no longer be decrypted: answer those "
        "prompts again",
    ).strip()
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

    def check_transport(self) -> None:
        """Conflict when answers would reach agents readable by the network: the action
        carrying them travels in the check-in response, so gRPC must serve TLS
        (``tls_cert_file`` and ``tls_key_file``) unless it listens on loopback only."""
        config = self._config
        if config.tls_cert_file or is_loopback(config.grpc_host):
            return
        raise Conflict(
            f"inputs cannot be sent: gRPC serves plain text on {config.grpc_host} (not loopback), "
            "so the answers would cross the network readable by anyone on the path; serve gRPC "
            "over TLS (set tls_cert_file and tls_key_file, e.g. from `flagpost-server tls "
            "selfsigned`) and restart the server"
        )

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
        self,
        run_id: str,
        request_id: str,
        answers: Mapping[str, Any],
        by: str,
        *,
        bus: EventBus | None = None,
    ) -> PendingAction:
        """Answer the run's current input request: every field, each at most
        ``input_max_bytes``. Encrypts and stores the answers, queues the ``provide_input``
        action (its stored params: ``run_id`` and ``request_id`` only) and records who answered
        and when. NotFound for an unknown run; Conflict when the run is not waiting, the form is
        stale (the agent asked again since) or answers for this request are already on their
        way; InvalidArgument naming the field that is missing, unknown or too long. After the
        commit it wakes ``bus``'s run streams (this process; other replicas hear the
        ``pg_notify``), so open run pages show "answers sent" at once. Conflict too while gRPC
        serves plain text on an address other than loopback (``check_transport``)."""
        self.check_transport()
        by = requester(by)
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
                # Answers on their way: stored, and their action neither acknowledged nor
                # expired. Once the agent acknowledged them (and refused them, or they did not
                # fit) or they expired undelivered, new answers are accepted.
                stored = await inputs_store.get_answers(session, run.id, now)
                if (
                    stored is not None
                    and stored.action_open
                    and stored.request_id == request.request_id
                ):
                    raise Conflict(
                        f"answers to this request were already sent by {stored.answered_by}; "
                        "waiting for the agent"
                    )
                checked = self._check_answers([f.name for f in request.fields], answers)
                action = new_action(
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
        if bus is not None:
            bus.publish_runs([run.id])
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


async def run_states_among(
    sessions: async_sessionmaker[AsyncSession], run_ids: Sequence[str]
) -> dict[str, str]:
    """The state of each of ``run_ids`` that has a run; ids without a run are absent (History
    rows link only to runs that exist, and badge those waiting for input)."""
    if not run_ids:
        return {}
    with unavailable_on_outage("run states"):
        async with sessions() as session:
            return await inputs_store.run_states_among(session, run_ids)
