"""Loaded by the server that ``tests.bench.stream_memory --tracemalloc`` starts (this directory
is put first on its PYTHONPATH): starts :mod:`tracemalloc` and, on SIGUSR2, writes a snapshot
to ``$FLAGPOST_BENCH_SNAPSHOT_DIR/snap-<n>.pickle`` after a full collection. Bench-only."""

from __future__ import annotations

import os

if os.environ.get("FLAGPOST_BENCH_SNAPSHOT_DIR"):
    import gc
    import itertools
    import pickle
    import signal
    import tracemalloc
    from types import FrameType

    tracemalloc.start(4)
    _count = itertools.count()

    def _snapshot(signum: int, frame: FrameType | None) -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot()
        path = os.path.join(os.environ["FLAGPOST_BENCH_SNAPSHOT_DIR"], f"snap-{next(_count)}")
        with open(path + ".tmp", "wb") as out:
            pickle.dump(snap, out)
        os.replace(path + ".tmp", path + ".pickle")

    signal.signal(signal.SIGUSR2, _snapshot)
