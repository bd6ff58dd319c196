"""The decision log: every decision becomes one JSON line, written off the hot path.

`record` is called on the request path, so it only appends a small tuple to a
bounded deque (an atomic append under the GIL, no lock) and returns. A
writer thread wakes every `flush_interval_ms`, serialises what is queued,
feeds it to the observers (metrics) and writes it out in one batch. When the
queue is full the line is dropped and counted: a slow disk or a blocked stdout
pipe costs log lines, never a blocked call. `close` drains the queue and
stops the thread, so a graceful shutdown loses nothing.

A transport that answers on an event loop calls `encode_queued` once its answers are written: the lines are
serialised (and the observers fed) there, between reads, and the writer thread is left only the writes, during
which it does not hold the GIL. Serialising on the writer thread took the GIL from the loop at every point the loop
let it go (each socket write, each onnxruntime run) for up to a batch, ~2 ms, and each handover costs both threads.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from authz_server.audit.config import LogConfig
from authz_server.audit.destinations import Destination, open_destination
from authz_server.audit.record import HeaderFilter, build_record, build_shed_record

if TYPE_CHECKING:
    # Types only: the log must be importable without the decision path it serves.
    from authz_server.authorizer import StageTimings
    from authz_server.call import Call
    from authz_server.decision import Decision

log = logging.getLogger("authz_server.audit")

QueuedDecision = tuple["Call", "Decision", "StageTimings", float, bytes | None, int]
"""call, decision, timings, decided_at, the encoded line when built before queueing, the entry's weight."""
_LARGE_CALL_BYTES = 8192
"""A call carrying more request text than this (path, certificate, header values) is turned into its capped line
before it is queued: the queue then holds a few KiB for it, not the request (up to 4 MiB) it references."""
_ENTRY_OVERHEAD = 1024
"""Bytes a queued entry holds besides the request's text: the parsed call, the decision, the timings (measured:
10,000 queued benchmark calls of ~1.6 KiB on the wire held 24.5 MiB, 2.5 KiB each)."""
# The writer takes the GIL from the thread answering checks. Draining 512 lines in one go held it for ~15 ms, and
# the answering thread waited up to a switch interval (5 ms) each time it wanted it back. Batches of 64 with a
# 0.2 ms sleep between them hand it back on the writer's terms: at a steady 600 checks/s the client p50 fell from
# 2.55 to 2.10 ms and the p99 from 66 to 30 ms (benchmarks/RESULTS.md, "What each change bought").
_BATCH = 64
_YIELD_S = 0.0002
# The writer shares the GIL with the deciding threads, so its CPU is theirs: orjson writes a line in ~3 µs where
# json.dumps took ~22. Both give the same compact UTF-8 text; orjson spells tiny floats' exponents without the
# padding zero (1e-6 for 1e-06), the same JSON number.
# The standard library's encoder is kept for the one thing orjson refuses: strings that are not valid Unicode
# (a file name's undecodable bytes, carried by surrogate escapes), which it writes backslash-escaped.
_EMPTY: Mapping[str, str] = MappingProxyType({})
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def encode_line(record: dict[str, Any]) -> bytes:
    """One decision log line, without its newline."""
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:
        return _ENCODER.encode(record).encode("utf-8", "backslashreplace")


class DecisionObserver(Protocol):
    """Sees every decision on the writer thread (metrics), whatever the log destination."""

    def observe(self, call: Call, decision: Decision, timings: StageTimings) -> None: ...


class DecisionLog:
    """The server's DecisionSink. Create, `start()`, hand to the Authorizer, `close()` on shutdown."""

    def __init__(
        self,
        config: LogConfig,
        observers: tuple[DecisionObserver, ...] = (),
        destination: Destination | None = None,
    ) -> None:
        self.config = config
        self._observers = list(observers)
        self._destination = destination
        self._headers = HeaderFilter(config.headers, config.redact)
        self._queue: collections.deque[QueuedDecision] = collections.deque()
        self._limit = config.queue_size
        self._byte_limit = config.queue_max_bytes
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._counts_lock = threading.Lock()
        self._dropped = 0
        self._write_failures = 0
        self._written = 0
        self._decisions = 0
        self._encoded: collections.deque[tuple[bytes, int]] = collections.deque()
        """Batches serialised by `encode_queued` (their lines, how many), waiting for the writer."""
        self._encoded_elsewhere = False
        self._shed_reader: Callable[[], Mapping[str, int]] | None = None
        self._shed_seen: dict[str, int] = {}
        self._shed_since = time.time()

    # --- hot path -------------------------------------------------------------

    def record(self, call: Call, decision: Decision, timings: StageTimings) -> None:
        # len() then append() can overshoot the limit by a few under concurrency; bounded is what matters.
        if len(self._queue) >= self._limit or self._closed:
            with self._counts_lock:
                self._dropped += 1
            return
        decided_at = time.time()
        # The parsed call references the whole request; what it weighs is mostly its text. ~1.5 us for ten headers.
        text = len(call.path) + len(call.source.certificate) + sum(map(len, call.headers.values()))
        line: bytes | None = None
        if text > _LARGE_CALL_BYTES:
            record = build_record(call, decision, timings, decided_at, self._headers, self.config.max_value_bytes)
            # A copy of exactly the line: orjson's own buffer is over-allocated (a 1.5 KiB line held 16 KiB).
            line = bytes(memoryview(encode_line(record)))
            # Nothing may keep referencing the request: both maps are views into the parsed message.
            call = replace(
                call,
                path="",
                headers=_EMPTY,
                context_extensions=_EMPTY,
                source=replace(call.source, certificate=""),
            )
            text = len(line)
        weight = text + _ENTRY_OVERHEAD
        with self._bytes_lock:
            full = self._queued_bytes + weight > self._byte_limit
            if not full:
                self._queued_bytes += weight
        if full:
            with self._counts_lock:
                self._dropped += 1
            return
        self._queue.append((call, decision, timings, decided_at, line, weight))

    def encode_queued(self) -> None:
        """Serialise what is queued on this thread (the event loop's, once its answers are written) and feed the
        observers; the writer thread then only writes. From the first call on, only this thread serialises."""
        self._encoded_elsewhere = True
        while self._queue:
            lines, taken = self._encode_batch()
            if lines:
                chunk = b"\n".join(lines) + b"\n"
                with self._bytes_lock:
                    self._queued_bytes += len(chunk)
                self._encoded.append((chunk, len(lines)))
            if not taken:
                return

    # --- lifecycle --------------------------------------------------------------

    def add_observer(self, observer: DecisionObserver) -> None:
        """Register before `start`; observers run on the writer thread."""
        self._observers.append(observer)

    def count_shed(self, reader: Callable[[], Mapping[str, int]]) -> None:
        """Write one counted line per flush for the calls shed without a decision (`reader`: totals by reason).

        Shed calls come in thousands a second exactly when CPU is short, so they get no line each: the writer
        reads the totals when it wakes and writes one line with what changed."""
        self._shed_reader = reader

    def start(self) -> None:
        """Open the destination and start the writer; raises OSError naming the destination when it cannot."""
        if self._thread is not None:
            return
        if self._destination is None:
            spec = self.config.decisions
            try:
                self._destination = open_destination(spec, self.config.max_bytes, self.config.backups)
            except OSError as exc:
                raise OSError(exc.errno, f"log.decisions: cannot open {spec}: {exc.strerror}") from exc
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write everything queued, then stop. Lines still queued after `timeout_s` are counted as dropped."""
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                left = self.queued
                with self._counts_lock:
                    self._dropped += left
                log.error("decision log: writer did not finish within %.1fs; %d lines lost", timeout_s, left)
                return
        elif self._queue:
            # Never started: nothing could have been written, so say how much is lost.
            with self._counts_lock:
                self._dropped += len(self._queue)
            self._queue.clear()
        if self._destination is not None:
            try:
                self._destination.close()
            except OSError as exc:
                log.error("decision log: closing %s failed: %s", self.config.decisions, exc)

    # --- counters (read by metrics at scrape time) --------------------------------

    @property
    def dropped(self) -> int:
        """Lines lost because the queue was full, the log was closed, or the writer could not finish."""
        return self._dropped

    @property
    def write_failures(self) -> int:
        """Lines lost because the destination refused them (disk full, closed pipe, ...)."""
        return self._write_failures

    @property
    def written(self) -> int:
        return self._written

    @property
    def decisions(self) -> int:
        """Decisions taken off the queue (written or not), the count metrics report."""
        return self._decisions

    @property
    def queued(self) -> int:
        """Decisions not yet written: queued, or serialised and waiting for the writer."""
        return len(self._queue) + sum(lines for _, lines in list(self._encoded))

    # --- writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.flush_interval_ms / 1000.0
        while True:
            stopping = self._stop.wait(interval)
            while self._encoded:
                self._write_encoded()
            # Once the loop serialises, it alone does while serving; at close it has stopped and nothing is left
            # behind.
            while self._queue and (stopping or not self._encoded_elsewhere):
                self._drain_batch()
                if self._queue and not stopping:
                    time.sleep(_YIELD_S)
            self._write_shed()
            if stopping:
                return

    def _write_encoded(self) -> None:
        chunk, lines = self._encoded.popleft()
        self._write(chunk, lines)
        with self._bytes_lock:
            self._queued_bytes -= len(chunk)

    def _write_shed(self) -> None:
        if self._shed_reader is None or self.config.decisions == "off":
            return
        totals = self._shed_reader()
        changed = {reason: count - self._shed_seen.get(reason, 0) for reason, count in totals.items()}
        changed = {reason: count for reason, count in changed.items() if count}
        if not changed:
            return
        now = time.time()
        line = encode_line(build_shed_record(changed, self._shed_since, now))
        self._shed_seen, self._shed_since = dict(totals), now
        assert self._destination is not None
        try:
            self._destination.write(line + b"\n")
        except (OSError, ValueError) as exc:
            self._write_failures += 1
            log.error("decision log: writing a shed line to %s failed: %s", self.config.decisions, exc)

    def _drain_batch(self) -> None:
        lines, _ = self._encode_batch()
        if lines:
            self._write(b"\n".join(lines) + b"\n", len(lines))

    def _encode_batch(self) -> tuple[list[bytes], int]:
        """Take up to _BATCH queued decisions, feed them to the observers and serialise them: (lines, taken)."""
        queue = self._queue
        writing = self.config.decisions != "off"
        lines: list[bytes] = []
        encode, headers, limit = encode_line, self._headers, self.config.max_value_bytes
        taken = released = 0
        for _ in range(_BATCH):
            try:
                call, decision, timings, decided_at, built, weight = queue.popleft()
            except IndexError:
                break
            taken += 1
            released += weight
            for observer in self._observers:
                try:
                    observer.observe(call, decision, timings)
                except Exception:
                    log.exception("decision log: observer %r failed", observer)
            if writing:
                try:
                    if built is None:
                        built = encode(build_record(call, decision, timings, decided_at, headers, limit))
                    lines.append(built)
                except Exception:
                    log.exception("decision log: cannot serialise decision %s", decision.decision_id)
                    self._write_failures += 1
        self._decisions += taken
        with self._bytes_lock:
            self._queued_bytes -= released
        return lines, taken

    def _write(self, data: bytes, lines: int) -> None:
        assert self._destination is not None
        try:
            self._destination.write(data)
        except (OSError, ValueError) as exc:
            self._write_failures += lines
            log.error("decision log: writing %d lines to %s failed: %s", lines, self.config.decisions, exc)
        else:
            self._written += lines
