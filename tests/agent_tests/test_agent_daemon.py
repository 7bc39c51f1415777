"""The daemon's delivery timing in-process against a real gRPC server: `once` drains a backlog
bigger than one cycle; `run` jitters its first check-in."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from agent_testlib import FakeServer, enrolled_config

from agent import events
from agent.daemon import Agent


def test_once_drains_a_backlog_bigger_than_one_cycle(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    config = enrolled_config(
        tmp_path,
        fake_server,
        FLAGPOST_AGENT_MAX_EVENTS_PER_CHECKIN="10",
        FLAGPOST_AGENT_MAX_CHUNKS_PER_CYCLE="2",
    )
    with Agent(config) as agent:
        for n in range(55):
            agent.outbox.add(
                events.migration_event(
                    event_type=events.DETECTION,
                    status=events.NOT_NEEDED,
                    run_id="",
                    message=f"e{n}",
                    system_info={},
                )
            )
        assert agent.once() == 0
        assert agent.outbox.depth() == 0
    assert len(fake_server.stored) == 56  # the backlog + this run's detection
    assert max(len(request.events) for request in fake_server.checkins) == 10


def test_run_jitters_the_first_checkin(tmp_path: Path, fake_server: FakeServer) -> None:
    config = enrolled_config(tmp_path, fake_server, FLAGPOST_AGENT_STARTUP_JITTER_SECONDS="1")
    seed = next(s for s in range(100) if random.Random(s).uniform(0, 1) > 0.6)
    expected = random.Random(seed).uniform(0, 1)
    stop = threading.Event()

    def daemon() -> None:  # the outbox's SQLite connection belongs to the thread that made it
        with Agent(config, rng=random.Random(seed)) as agent:
            threading.Thread(target=lambda: (stop.wait(), agent.request_stop())).start()
            agent.run()

    started = time.monotonic()
    thread = threading.Thread(target=daemon)
    thread.start()
    try:
        while not fake_server.checkins and time.monotonic() - started < 10:
            time.sleep(0.01)
        first = time.monotonic() - started
    finally:
        stop.set()
        thread.join(10)
    assert fake_server.checkins, "the agent never checked in"
    assert expected <= first < expected + 2
