"""The live streams' shared readers (server.web.history.fanout, server.web.runs.fanout): the
Python filter selects exactly what the SQL filter does; many History streams cost one shared
read per wake-up, not one per stream; a stream behind the reader catches up and then joins it
without a gap or a duplicate; run streams of one run share one reader; nothing of a stream is
left behind once its client disconnects. Real servers (port 0), real HTTP and gRPC clients, both
databases."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import aiohttp
from runs_testlib import log_line, run_update
from server_testlib import logged_in_http
from streams_testlib import StatementCounter, agents, live_subscribers, start_streams_server, until
from test_grpc_ingest import event
from test_history_live import Frame, SseStream, ids_of, open_stream
from test_history_web import AGENTS, BASE_TIME, _event, sample_events, seed

from flagpost.v1 import agent_pb2
from server import app_keys
from server.config import ServerConfig
from server.domain import Category, EventFilter, EventStatus, EventType, Severity
from server.storage import history as history_store
from server.storage.db import create_engine_for_url, make_sessionmaker
from server.web.live import LIVE

# --------------------------------------------------------------------------- Python == SQL


def _varied_events() -> list[object]:
    agent_ids = list(AGENTS)
    extra = [
        _event(100, agent_ids[0], EventType.MIGRATION_EXECUTION, EventStatus.FAILED,
               message="Permission DENIED on /etc", error_message="EACCES"),
        _event(101, agent_ids[1], EventType.MIGRATION_DETECTION, EventStatus.NOT_NEEDED,
               message="déjà à jour", error_message=""),
        _event(102, agent_ids[2], EventType.MIGRATION_EXECUTION, EventStatus.PARTIAL,
               message="50%_done with a back\\slash", run_id=str(uuid.UUID(int=77))),
        _event(103, agent_ids[0], EventType.MIGRATION_DETECTION, EventStatus.FAILED,
               category=Category.AGENT, message="agent notice: outbox quarantined"),
    ]  # fmt: skip
    return [*sample_events(), *extra]


def _filters() -> list[EventFilter]:
    agent_ids = list(AGENTS)
    texts = ["denied", "DENIED", "web-0", "DB-01", "%", "_", "50%_", "\\", "déjà", "0000-7000",
             "event number 1", "0190", "step failed_", "nothing matches this"]  # fmt: skip
    filters = [EventFilter(), EventFilter(migration_only=True)]
    filters += [EventFilter(text=t) for t in texts]
    filters += [EventFilter(severities=(s,)) for s in Severity]
    filters += [EventFilter(severities=(Severity.ERROR, Severity.WARNING))]
    filters += [EventFilter(event_types=(t.value,)) for t in EventType]
    filters += [
        EventFilter(event_types=("migration_execution_failed",)),
        EventFilter(event_types=("migration_detection_success", "migration_execution")),
        EventFilter(event_types=("migration_detection_not_needed", "migration_execution_partial")),
    ]
    filters += [EventFilter(agent_id=a) for a in agent_ids]
    filters += [
        EventFilter(since=BASE_TIME + timedelta(minutes=10)),
        EventFilter(until=BASE_TIME + timedelta(minutes=20)),
        EventFilter(
            since=BASE_TIME + timedelta(minutes=5),
            until=BASE_TIME + timedelta(minutes=30),
            severities=(Severity.ERROR,),
        ),
        EventFilter(agent_id=agent_ids[0], text="failed", migration_only=True),
        EventFilter(
            event_types=("migration_execution",), severities=(Severity.SUCCESS,), text="OK"
        ),
    ]
    return filters


async def test_python_filter_selects_exactly_what_the_sql_filter_selects(db_url: str) -> None:
    await seed(db_url, _varied_events())  # type: ignore[arg-type]
    engine = create_engine_for_url(db_url)
    sessions = make_sessionmaker(engine)
    ascii_case = db_url.startswith("sqlite")
    try:
        async with sessions() as session:
            upto = await history_store.max_event_id(session)
            every = await history_store.query_events_after(session, EventFilter(), 0, upto, 1000)
            assert len(every) == len(_varied_events())
            for f in _filters():
                selected = await history_store.query_events_after(session, f, 0, upto, 1000)
                matched = [
                    e for e in every if history_store.event_matches(f, e, ascii_case=ascii_case)
                ]
                assert [e.id for e in matched] == [e.id for e in selected], f
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- shared reads

STREAMS = 20


async def test_many_history_streams_share_one_read_per_wakeup(
    server_config: ServerConfig,
) -> None:
    config = replace(server_config, max_streams_per_session=STREAMS)
    server = await start_streams_server(config)
    web_engine = server.app[app_keys.WEB_ENGINE]
    try:
        async with logged_in_http(server, "viewer") as http, agents(server, 1) as [agent]:
            url = f"{server.web_url}/history/stream"
            everything = [await open_stream(http, url) for _ in range(STREAMS // 2)]
            errors = [
                await open_stream(http, url, [("severity", "error")]) for _ in range(STREAMS // 4)
            ]
            needles = [await open_stream(http, url, [("q", "NEEDLE")]) for _ in range(STREAMS // 4)]
            await until(lambda: live_subscribers(server) == STREAMS)
            batch = [
                event(status=agent_pb2.EVENT_STATUS_FAILED, message="plain failure"),
                event(status=agent_pb2.EVENT_STATUS_SUCCESS, message="a needle in it"),
                event(status=agent_pb2.EVENT_STATUS_FAILED, message="needle and failure"),
            ]
            with StatementCounter(web_engine) as reads:
                reply = await agent.checkin(events=batch)
                assert len(reply.acknowledged_event_ids) == 3
                got_all = [await s.events(3) for s in everything]
                got_errors = [await s.events(2) for s in errors]
                got_needles = [await s.events(2) for s in needles]
            ids = ids_of(got_all[0])
            assert all(ids_of(frames) == ids for frames in got_all)
            assert all(ids_of(frames) == [ids[0], ids[2]] for frames in got_errors)
            assert all(ids_of(frames) == [ids[1], ids[2]] for frames in got_needles)
            html = {frames[0].payload["html"] for frames in got_all}
            assert len(html) == 1 and "plain failure" in html.pop()
            # One shared read (the horizon and the rows) per wake-up, not two per stream.
            assert reads.count < STREAMS, reads.count
            for s in [*everything, *errors, *needles]:
                s.close()
    finally:
        await server.stop()


async def test_a_stream_behind_the_reader_catches_up_then_joins(
    server_config: ServerConfig,
) -> None:
    server = await start_streams_server(server_config)
    try:
        async with logged_in_http(server, "viewer") as http, agents(server, 1) as [agent]:
            url = f"{server.web_url}/history/stream"
            ahead = await open_stream(http, url)
            await agent.checkin(events=[event(), event(), event()])
            first = await ahead.events(3)
            before = str(ids_of(first)[0] - 1)
            behind = await open_stream(http, url, last_event_id=before)
            assert ids_of(await behind.events(3)) == ids_of(first)  # its own catch-up reads
            await until(lambda: live_subscribers(server) == 2)
            await agent.checkin(events=[event(), event()])
            later = ids_of(await ahead.events(2))
            assert ids_of(await behind.events(2)) == later  # now from the shared reader
            assert later[0] == ids_of(first)[-1] + 1
            assert await behind.quiet(0.5) == [] and await ahead.quiet(0.1) == []
            ahead.close()
            behind.close()
    finally:
        await server.stop()


async def test_run_streams_of_one_run_share_one_reader(server_config: ServerConfig) -> None:
    config = replace(server_config, max_streams_per_session=4)
    server = await start_streams_server(config)
    try:
        async with logged_in_http(server, "viewer") as http, agents(server, 1) as [agent]:
            run_id = str(uuid.uuid4())
            await agent.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING)])
            url = f"{server.web_url}/runs/{run_id}/stream"
            plain = [await open_stream_run(http, url) for _ in range(2)]
            errors = await open_stream_run(http, url, [("level", "ERROR")])
            runs = server.app[LIVE].runs
            assert runs is not None
            await until(lambda: live_subscribers(server) == 3)
            assert list(runs.readers) == [run_id]  # one reader for the three streams
            lines = [
                log_line(run_id, 1),
                log_line(run_id, 2, level="ERROR", message="boom"),
                log_line(run_id, 3),
            ]
            await agent.checkin(log_lines=lines)
            for stream in plain:
                assert [f.id for f in await log_frames(stream, 3)] == ["1", "2", "3"]
            [boom] = await log_frames(errors, 1)
            assert boom.id == "2" and "boom" in boom.payload["html"]
            for stream in [*plain, errors]:
                stream.close()
            await until(lambda: not runs.readers)
    finally:
        await server.stop()


async def open_stream_run(
    http: aiohttp.ClientSession, url: str, params: list[tuple[str, str]] | None = None
) -> SseStream:
    return await open_stream(http, url, params)


async def log_frames(stream: SseStream, count: int) -> list[Frame]:
    found: list[Frame] = []
    while len(found) < count:
        frame = await stream.frame()
        if frame.event == "log":
            found.append(frame)
    return found


# --------------------------------------------------------------------------- nothing left


async def test_nothing_of_a_stream_is_left_after_its_client_disconnects(
    server_config: ServerConfig,
) -> None:
    config = replace(server_config, max_streams_per_session=10)
    server = await start_streams_server(config)
    bus = server.app[app_keys.BUS]
    live = server.app[LIVE]
    try:
        async with agents(server, 1) as [agent]:
            run_id = str(uuid.uuid4())
            await agent.checkin(run_updates=[run_update(run_id, agent_pb2.RUN_STATE_RUNNING)])
            async with logged_in_http(server, "viewer") as http:
                history = [
                    await open_stream(http, f"{server.web_url}/history/stream") for _ in range(5)
                ]
                runs = [
                    await open_stream(http, f"{server.web_url}/runs/{run_id}/stream")
                    for _ in range(3)
                ]
                await until(lambda: live_subscribers(server) == 8)
                await agent.checkin(events=[event()])
                for stream in history:
                    await stream.events(1)
                assert bus.subscribers == 8 and live.limits.total == 8
                for stream in [*history, *runs]:
                    stream.close()
            await until(lambda: live_subscribers(server) == 0 and bus.subscribers == 0)
            await until(lambda: live.limits.total == 0)
            assert live.history is not None
            fanout = live.history
            await until(lambda: fanout.task is not None and fanout.task.done())
            assert fanout.subscribers == set() and fanout.position is None
            assert live.runs is not None
            await until(lambda: live.runs is not None and live.runs.readers == {})
            assert live.limits.open_for("") == 0 and not live.limits._by_session
    finally:
        await server.stop()
