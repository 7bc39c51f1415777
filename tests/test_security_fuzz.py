"""Fuzzing CheckIn against a real server (SQLite): >= 10,000 random and near-valid requests.

Hypothesis draws batches of request specs: valid check-ins, valid ones with one or more fields
mutated (bad uuids, huge strings, NUL, unknown enums, out-of-range timestamps, wrong agent ids and
credentials, oversized maps and batches) and raw bytes (random, or a valid request truncated or
with flipped bytes) sent through an identity-serializer channel. Each batch runs concurrently on
one grpc.aio channel to the real server from the ``running_server`` fixture.

Every answer must be a clean status (never UNKNOWN or INTERNAL); a spec the test knows to be
valid must be accepted (or shed with RESOURCE_EXHAUSTED), one it knows to be invalid must be
refused; the server stays SERVING; and the stored event ids are exactly those of the requests
answered OK.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_testlib import make_server_config
from sqlalchemy import select

from flagpost.v1 import agent_pb2, agent_pb2_grpc
from server import app_keys
from server.app import RunningServer
from server.config import ServerConfig
from server.services import enrollment
from server.storage.models import UpdateEvent

CHECKIN = "/flagpost.v1.AgentService/CheckIn"
BATCH = 25
EXAMPLES = 420  # x BATCH requests: comfortably above 10,000
TARGET = 10_000
CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# The contract of proto/flagpost/v1/agent.proto, apart from server.grpc.convert.
ALLOWED = {
    agent_pb2.EVENT_TYPE_MIGRATION_DETECTION: {1, 2, 3, 4},  # success failed warning not_needed
    agent_pb2.EVENT_TYPE_MIGRATION_EXECUTION: {1, 2, 3, 5},  # success failed warning partial
    agent_pb2.EVENT_TYPE_AGENT_NOTICE: {1, 2, 3},
    agent_pb2.EVENT_TYPE_MIGRATION_REVERT: {1, 2, 3, 5},  # success failed warning partial
    agent_pb2.EVENT_TYPE_MIGRATION_PREVIEW: {1, 2, 3, 4},  # success failed warning not_needed
}
LIMITS = {
    "message": 1024,
    "error_message": 16384,
    "migration_from": 64,
    "migration_to": 64,
    "detail": 4096,
    "info_key": 128,
    "info_value": 1024,
    "info_entries": 64,
    "fact": 255,
    "events": 500,
}
EARLIEST = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
HOSTILE = [
    "",
    "\x00",
    "a\x00b",
    "' OR 1=1 --",
    "<script>x</script>",
    "\u202e\ufeff",
    "😀" * 3,
    "\\",
    "%_",
]

# --------------------------------------------------------------------------- strategies

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(HOSTILE),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\x00", "😀"]), st.integers(0, 20000)),
)
uint32 = st.integers(0, 2**32 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)


@dataclass
class EventSpec:
    """How to build one event; ``None`` fields keep the valid default."""

    id_kind: str = "fresh"  # fresh | upper | nohyphen | text | empty | braces
    id_text: str = ""
    event_type: int | None = None
    status: int | None = None
    strings: dict[str, str] = field(default_factory=dict)
    detail_strings: dict[str, str] = field(default_factory=dict)
    detail_ints: dict[str, int] = field(default_factory=dict)
    seconds: int | None = None  # offset from now unless absolute
    absolute_seconds: bool = False
    nanos: int | None = None
    drop_occurred_at: bool = False
    system_info: dict[str, str] | None = None
    run_id: str | None = None


@dataclass
class RequestSpec:
    """One CheckIn: either a built protobuf (events etc.) or raw bytes."""

    auth: str = "own"  # own | other | wrong | missing | malformed
    agent_id: str = "empty"  # empty | own | own_upper | other | text
    agent_text: str = ""
    facts: dict[str, str] | None = None
    events: list[EventSpec] = field(default_factory=list)
    oversize: bool = False
    runs_part: bool = False
    log_seq: int = 1
    log_message: str = ""
    raw: bytes | None = None
    raw_kind: str = ""  # random | truncated | flipped


detail_string_fields = st.sampled_from(
    ["failing_step", "file_path", "errno_name", "exception_type", "rollback", "backup_path"]
)

event_specs = st.builds(
    EventSpec,
    id_kind=st.sampled_from(["fresh"] * 6 + ["upper", "nohyphen", "text", "empty", "braces"]),
    id_text=texts,
    event_type=st.one_of(st.none(), st.integers(-3, 6), st.just(2**31 - 1)),
    status=st.one_of(st.none(), st.integers(-3, 8)),
    strings=st.dictionaries(
        st.sampled_from(["message", "error_message", "migration_from", "migration_to"]),
        texts,
        max_size=2,
    ),
    detail_strings=st.dictionaries(detail_string_fields, texts, max_size=2),
    detail_ints=st.dictionaries(st.sampled_from(["errno", "line"]), st.integers(0, 2**31 - 1)),
    seconds=st.one_of(st.none(), st.integers(-(10**9), 10**9), st.integers(-(2**40), 2**40)),
    absolute_seconds=st.booleans(),
    nanos=st.one_of(st.none(), int32),
    drop_occurred_at=st.sampled_from([False] * 15 + [True]),
    system_info=st.one_of(
        st.none(),
        st.dictionaries(texts, texts, max_size=4),
        st.integers(60, 70).map(lambda n: {f"k{i}": "v" for i in range(n)}),
    ),
    run_id=st.one_of(st.none(), st.just(""), st.just("upper"), texts),
)

fact_dicts = st.one_of(
    st.none(),
    st.just({"drop": ""}),  # no facts at all (refused where the credential is machine-bound)
    st.dictionaries(
        st.sampled_from(["hostname", "os", "kernel", "agent_version", "machine_id"]), texts
    ),
)

proto_requests = st.builds(
    RequestSpec,
    auth=st.sampled_from(["own"] * 8 + ["other", "wrong", "missing", "malformed"]),
    agent_id=st.sampled_from(["empty"] * 4 + ["own", "own_upper", "other", "text"]),
    agent_text=texts,
    facts=fact_dicts,
    events=st.lists(event_specs, max_size=5),
    oversize=st.sampled_from([False] * 30 + [True]),
    runs_part=st.sampled_from([False] * 5 + [True]),
    log_seq=st.integers(0, 2**64 - 1),
    log_message=texts,
)
raw_requests = st.builds(
    RequestSpec,
    auth=st.sampled_from(["own", "own", "wrong", "missing"]),
    events=st.lists(event_specs, max_size=2),
    raw=st.binary(max_size=300),
    raw_kind=st.sampled_from(["random", "truncated", "flipped"]),
)
request_specs = st.one_of(proto_requests, proto_requests, proto_requests, raw_requests)


# --------------------------------------------------------------------------- building requests


def is_uuid(text: str) -> bool:
    """The canonical hyphenated form, either case (checked without the server's regex)."""
    if len(text) != 36 or not text.isascii():
        return False
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def clean_text(value: str, limit: int) -> bool:
    return len(value) <= limit and "\x00" not in value


@dataclass
class Built:
    """A request ready to send and what the test expects of it."""

    payload: bytes
    metadata: tuple[tuple[str, str], ...]
    expect: str  # ok | reject | any
    event_ids: list[str]


@dataclass
class Fleet:
    own_id: str
    own_credential: str
    other_id: str
    other_credential: str
    fresh: count[int] = field(default_factory=lambda: count(1))
    run_tag: int = field(default_factory=lambda: uuid.uuid4().int >> 64)

    def new_id(self) -> str:
        return str(uuid.UUID(int=(self.run_tag << 64) | next(self.fresh)))


def facts_of(hostname: str) -> agent_pb2.HostFacts:
    """The host facts an agent on ``hostname`` enrolls and checks in with."""
    return agent_pb2.HostFacts(
        hostname=hostname,
        os="Linux",
        kernel="6.1",
        agent_version="0.1",
        machine_id=f"machine-{hostname}",
    )


def _event(spec: EventSpec, fleet: Fleet, now: int) -> tuple[agent_pb2.MigrationEvent, bool | None]:
    """The event and whether it is valid by the contract (None: too close to a limit to say)."""
    valid = True
    base = fleet.new_id()
    event_id = {
        "fresh": base,
        "upper": base.upper(),
        "nohyphen": base.replace("-", ""),
        "text": spec.id_text,
        "empty": "",
        "braces": "{" + base + "}",
    }[spec.id_kind]
    valid &= is_uuid(event_id)
    event_type = spec.event_type if spec.event_type is not None else 2
    status = spec.status if spec.status is not None else 2
    valid &= status in ALLOWED.get(event_type, set())
    event = agent_pb2.MigrationEvent(event_id=event_id, event_type=event_type, status=status)
    event.message, event.migration_from, event.migration_to = "fuzz", "1", "2"
    for name, value in spec.strings.items():
        setattr(event, name, value)
        valid &= clean_text(value, LIMITS.get(name, 64))
    for name, value in spec.detail_strings.items():
        setattr(event.error_detail, name, value)
        valid &= clean_text(value, LIMITS["detail"])
    for name, number in spec.detail_ints.items():
        setattr(event.error_detail, name, number)
    near_limit = False
    if not spec.drop_occurred_at:
        seconds = now if spec.seconds is None else spec.seconds
        if spec.seconds is not None and not spec.absolute_seconds:
            seconds = now + spec.seconds
        nanos = 0 if spec.nanos is None else spec.nanos
        event.occurred_at.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
        # A little slack around "now + 24h": the server's clock moves on while we build.
        near_limit = abs(seconds - (now + 86400)) < 120
        valid &= 0 <= nanos < 1_000_000_000 and EARLIEST <= seconds <= now + 86400
    else:
        valid = False
    if spec.system_info is not None:
        event.system_info.update(spec.system_info)
        valid &= len(spec.system_info) <= LIMITS["info_entries"]
        valid &= all(clean_text(k, LIMITS["info_key"]) for k in spec.system_info)
        valid &= all(clean_text(v, LIMITS["info_value"]) for v in spec.system_info.values())
    if spec.run_id is not None:
        run_id = str(uuid.uuid4()).upper() if spec.run_id == "upper" else spec.run_id
        event.run_id = run_id
        valid &= run_id == "" or is_uuid(run_id)
    else:
        event.run_id = str(uuid.uuid4())
    return event, None if near_limit else valid


def build(spec: RequestSpec, fleet: Fleet) -> Built:
    """Turn a spec into bytes + metadata + the expected outcome."""
    now = int(time.time())
    expect_ok = True
    maybe_refused = False  # valid by the contract, but other checks may refuse it
    ambiguous = False  # too close to a limit (or raw bytes) to say either way
    request = agent_pb2.CheckInRequest()
    request.facts.CopyFrom(facts_of("fuzz-host"))
    if spec.facts == {"drop": ""}:
        request.ClearField("facts")
        maybe_refused = True  # no facts: refused where the credential is machine-bound
    elif spec.facts is not None:
        for name, value in spec.facts.items():
            setattr(request.facts, name, value)
            limit = {"hostname": 255, "os": 255, "kernel": 255, "machine_id": 128}.get(name, 64)
            checked = value.strip() if name == "hostname" else value
            expect_ok &= clean_text(checked, limit)
        maybe_refused = True  # facts may be checked further (machine binding)
    for event_spec in spec.events:
        event, valid = _event(event_spec, fleet, now)
        request.events.append(event)
        if valid is None:
            ambiguous = True
        else:
            expect_ok &= valid
    if spec.oversize:
        template, _ = _event(EventSpec(), fleet, now)
        for _ in range(LIMITS["events"] + 1 - len(request.events)):
            copy = request.events.add()
            copy.CopyFrom(template)
            copy.event_id = fleet.new_id()
        expect_ok = False
    if spec.runs_part:
        run_id = str(uuid.uuid4())
        request.log_lines.add(run_id=run_id, seq=spec.log_seq, level="INFO", source="fuzz")
        request.log_lines[0].message = spec.log_message
        request.log_lines[0].timestamp.GetCurrentTime()
        maybe_refused = True  # run parts have their own rules
    agent_id = {
        "empty": "",
        "own": fleet.own_id,
        "own_upper": fleet.own_id.upper(),
        "other": fleet.other_id,
        "text": spec.agent_text,
    }[spec.agent_id]
    request.agent_id = agent_id
    speaker = fleet.other_id if spec.auth == "other" else fleet.own_id
    if agent_id and agent_id.lower() != speaker.lower():
        expect_ok = False  # PERMISSION_DENIED: the credential does not speak for that agent
    metadata: tuple[tuple[str, str], ...] = {
        "own": (("authorization", f"Bearer {fleet.own_credential}"),),
        "other": (("authorization", f"Bearer {fleet.other_credential}"),),
        "wrong": (("authorization", f"Bearer {fleet.own_credential}x"),),
        "missing": (),
        "malformed": (("authorization", f"Basic {fleet.own_credential}"),),
    }[spec.auth]
    if spec.auth == "other":
        maybe_refused = True  # fine for the other agent (its stored ids count as OK ones)
    elif spec.auth != "own":
        expect_ok = False
    payload = request.SerializeToString()
    if spec.raw is not None:
        if spec.raw_kind == "random":
            payload = spec.raw
        elif spec.raw_kind == "truncated":
            payload = payload[: len(spec.raw) % (len(payload) + 1)]
        else:
            flipped = bytearray(payload)
            for i, byte in enumerate(spec.raw[:8]):
                if flipped:
                    flipped[(byte * 7919 + i) % len(flipped)] ^= byte or 0xFF
            payload = bytes(flipped)
        ambiguous = spec.auth == "own"  # the bytes may still parse as a valid check-in
        expect_ok = False
    if ambiguous:
        expect = "any"
    elif not expect_ok:
        expect = "reject"
    else:
        expect = "any" if maybe_refused else "ok"
    return Built(payload, metadata, expect, event_ids_of(payload))


def event_ids_of(payload: bytes) -> list[str]:
    """The event ids the server would read from ``payload`` (none if it does not parse)."""
    try:
        return [e.event_id.lower() for e in agent_pb2.CheckInRequest.FromString(payload).events]
    except DecodeError:
        return []


# --------------------------------------------------------------------------- the test


@dataclass
class Tally:
    sent: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    ok_ids: set[str] = field(default_factory=set)
    all_ids: set[str] = field(default_factory=set)


async def _send(call: Any, built: Built) -> grpc.StatusCode:
    try:
        await call(built.payload, metadata=built.metadata, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def server_config(db_url: str, tmp_path: Path) -> ServerConfig:
    """The conftest's, without the retention job: fuzzed events carry any time at all, and its
    first run (60 s after start) would prune the old ones while the test still counts them."""
    return make_server_config(
        db_url, tmp_path, checkin_interval_seconds=1, retention_interval_minutes=0
    )


async def _enroll(running_server: RunningServer, channel: grpc.aio.Channel) -> Fleet:
    token = await enrollment.create_token(running_server.app[app_keys.SESSIONS], uses=2)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    replies = []
    for name in ("fuzz-host", "fuzz-other"):
        enroll = agent_pb2.EnrollRequest(token=token, facts=facts_of(name))
        replies.append(await stub.Enroll(enroll))
    return Fleet(
        replies[0].agent_id, replies[0].credential, replies[1].agent_id, replies[1].credential
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_fuzzed_checkins_get_clean_statuses_and_store_only_valid_events(
    running_server: RunningServer,
) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{running_server.grpc_port}",
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    ) as channel:
        fleet = await _enroll(running_server, channel)
        call = channel.unary_unary(CHECKIN)  # identity serializers: bytes in, bytes out

        async def run_batch(batch: list[Built]) -> list[grpc.StatusCode]:
            return list(await asyncio.gather(*(_send(call, b) for b in batch)))

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(request_specs, min_size=BATCH, max_size=BATCH))
        def fuzz(specs: list[RequestSpec]) -> None:
            batch = [build(spec, fleet) for spec in specs]
            codes = asyncio.run_coroutine_threadsafe(run_batch(batch), loop).result(120)
            for built, code in zip(batch, codes, strict=True):
                tally.sent += 1
                tally.by_code[code.name] = tally.by_code.get(code.name, 0) + 1
                tally.all_ids.update(built.event_ids)
                assert code in CLEAN, (code, built.payload[:200], built.metadata)
                if built.expect == "ok":
                    assert code in {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, (
                        code,
                        agent_pb2.CheckInRequest.FromString(built.payload),
                    )
                elif built.expect == "reject":
                    assert code != grpc.StatusCode.OK, built.payload[:300]
                if code == grpc.StatusCode.OK:
                    tally.ok_ids.update(built.event_ids)

        started = time.monotonic()
        await asyncio.to_thread(fuzz)
        elapsed = time.monotonic() - started

        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    print(f"\nfuzz: {tally.sent} CheckIn requests in {elapsed:.1f}s: {tally.by_code}")
    assert tally.sent >= TARGET
    assert tally.by_code.get("OK", 0) > 500 and tally.by_code.get("INVALID_ARGUMENT", 0) > 500
    async with running_server.app[app_keys.SESSIONS]() as session:
        stored = set((await session.execute(select(UpdateEvent.event_id))).scalars())
    assert stored == tally.ok_ids
    assert tally.all_ids - tally.ok_ids, "some rejected requests carried event ids"
    assert not (tally.all_ids - tally.ok_ids) & stored


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_corrupt_message_bytes_are_invalid_argument_after_authentication(
    running_server: RunningServer,
) -> None:
    valid = agent_pb2.CheckInRequest(facts=facts_of("fuzz-host")).SerializeToString()
    corrupt = [b"\xff\xff\xff", b"\x0a\x03\xff\xfe\xfd", valid[:-1], b"\x1a\x05\x0a"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.grpc_port}") as channel:
        fleet = await _enroll(running_server, channel)
        call = channel.unary_unary(CHECKIN)
        own = (("authorization", f"Bearer {fleet.own_credential}"),)
        for payload in corrupt:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(payload, metadata=own)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, payload
            assert refused.value.details() == "request: is not a valid protobuf message"
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await call(payload)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await call(valid, metadata=own) is not None  # the same channel still works
