"""The transcript watcher process: Claude Code's JSONL transcripts in, events to the ingest out.

It follows every ``*.jsonl`` under ``transcripts_dir`` with watchfiles (inotify and its peers), or
where notifications are unavailable by polling (its own: every file's inode, size and mtime each
``watch_poll_interval``), plus a full rescan every half minute in case a notification was missed. It
parses each new complete line (``core.transcripts``), turns it into events with the
``ConversationTracker`` (``core.conversations``) and pushes them to the ingest with the producer
API. Read offsets and the tracker's state are saved in a small state file after each batch, so a
restart publishes nothing twice; the first start (no state file) publishes only the conversations
whose file changed within ``watch_backfill``.

The ingest keeps its live state in memory. The watcher listens to the ingest's beats on the bus, and
when a new ingest run (epoch) appears it announces every known project and active conversation
again, so the queries answer the same after an ingest restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import zmq
from watchfiles import Change, awatch

from clients.producer import Producer
from core.config import Settings
from core.conversations import ConversationTracker, Outgoing
from core.errors import BootError, StateError
from core.metrics import Count
from core.transcripts import MessageLine, parse_line
from workers.child import Liveness
from workers.curve import bus_keys
from workers.shared import MetricsRow
from workers.tail import Position, TranscriptFile

log = logging.getLogger("observatory.watcher")

STATE_VERSION = 1
RESCAN_INTERVAL = 30.0
SAVE_INTERVAL = 0.5
TICK_INTERVAL = 1.0
DEBOUNCE_MS = 200  # most time changes are gathered before they are handed over
STEP_MS = 20  # quiet time that ends a gathering early: a lone append is read within ~50 ms
HEAD_SCAN_BYTES = 1 << 16  # how far into a file left out of the backfill we look for its cwd
MAX_DEPTH = 4  # transcripts_dir/<project>/<session>.jsonl, and sub-agents' files a level or two below
MAX_LOGGED_FILES = 10_000
# Events kept while the ingest takes none; past it the watcher stops reading, and the lines wait in
# their files (the offsets do not move) until the ingest is back.
MAX_OUTBOX = 100_000
CONTROL_FRAME, BEAT_FRAME = b"control", b"beat"


def default_state_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "observatory" / "watcher-state.json"


def is_transcript_or_folder(change: Change, path: str) -> bool:
    """Transcripts, and new folders: a file written into a folder before its watch is in place
    sends no event of its own, so a new folder is scanned."""
    return path.endswith(".jsonl") or (change == Change.added and os.path.isdir(path))


class Watcher:
    def __init__(
        self,
        settings: Settings,
        producer: Producer,
        bus: zmq.Socket[bytes],
        state_path: Path,
        metrics: MetricsRow,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.producer = producer
        self.bus = bus  # SUB to the ingest's beats: a new epoch means a new, empty live state
        self.epoch: str | None = None  # the ingest run the watcher's events went to
        self.state_path = state_path
        self.root = Path(os.path.expanduser(settings.transcripts_dir)).resolve()
        self.max_line = settings.max_transcript_line_bytes
        self.files: dict[str, TranscriptFile] = {}
        self.tracker = ConversationTracker(
            idle_timeout_ms=round(settings.conversation_idle_timeout * 1000),
            analytics_interval_ms=round(settings.analytics_interval * 1000),
            now_ms=_now_ms(),
        )
        self.outbox: deque[Outgoing] = deque()
        self.first_start = True
        self.polling = settings.watch_mode == "poll"
        self.counts: Counter[str] = Counter()  # lines, published, oversized, restarted files
        self._dirty = False
        self._saved_at = 0.0
        self._logged: set[tuple[str, str]] = set()
        self._held_back_logged = False
        self._rescan_due = False  # reading stopped on a full outbox: read everything again once it empties
        self._signatures: dict[str, tuple[int, int, int]] = {}  # what scan() saw of each file

    # --- state file ----------------------------------------------------------------------------

    def load_state(self) -> None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            log.info(
                "no state file at %s: first start, backfilling %gs",
                self.state_path,
                self.settings.watch_backfill,
            )
            return
        except OSError as exc:
            raise BootError(f"cannot read the watcher state file {self.state_path}: {exc.strerror}") from None
        try:
            state = orjson.loads(raw)
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise StateError("not a watcher state file of this version")
            self.tracker.restore(state["tracker"])
            epoch = state.get("epoch")
            self.epoch = epoch if isinstance(epoch, str) else None
            files = state["files"] if state.get("root") == str(self.root) else {}
        except (orjson.JSONDecodeError, KeyError, StateError) as exc:
            log.warning(
                "the state file %s is unreadable (%s): starting afresh; conversations changed within "
                "watch_backfill may be published again",
                self.state_path,
                exc,
            )
            return
        self.first_start = False
        if isinstance(files, dict):
            for key, raw_position in files.items():
                position = Position.from_json(raw_position)
                if isinstance(key, str) and position is not None:
                    self.files[key] = TranscriptFile(str(self.root / key), position)
        log.info(
            "resuming from %s: %d files, %d projects",
            self.state_path,
            len(self.files),
            len(self.tracker.projects),
        )

    def save_state(self) -> None:
        state = {
            "version": STATE_VERSION,
            "root": str(self.root),
            "epoch": self.epoch,
            "files": {
                key: file.position.to_json() for key, file in self.files.items() if file.position is not None
            },
            "tracker": self.tracker.snapshot(),
        }
        temporary = self.state_path.with_suffix(".tmp")
        try:
            # Project paths and conversation titles: for the owner's eyes only.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(orjson.dumps(state))
            os.replace(temporary, self.state_path)
        except OSError as exc:
            log.error("cannot save the state file %s: %s", self.state_path, exc.strerror)
            return
        self._dirty = False
        self._saved_at = time.monotonic()

    def save_if_due(self) -> None:
        if self._dirty and time.monotonic() - self._saved_at >= SAVE_INTERVAL:
            self.save_state()

    # --- files ---------------------------------------------------------------------------------

    def scan(self) -> list[str]:
        """Every transcript under the root: forget the vanished; return the new and the changed since
        the last scan (inode, size or mtime), oldest first."""
        found: dict[str, os.stat_result] = {}
        root_depth = len(self.root.parts)
        for folder, subfolders, names in os.walk(self.root):
            if len(Path(folder).parts) - root_depth >= MAX_DEPTH:
                subfolders.clear()
            for name in names:
                if name.endswith(".jsonl"):
                    path = os.path.join(folder, name)
                    with contextlib.suppress(OSError):
                        found[os.path.relpath(path, self.root)] = os.stat(path)
        for key in set(self.files) - set(found):
            self.forget(key)
        self._signatures = {k: v for k, v in self._signatures.items() if k in found}
        cutoff = time.time() - self.settings.watch_backfill
        to_read = []
        for key, stat in sorted(found.items(), key=lambda item: item[1].st_mtime):
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if key not in self.files and self.first_start and stat.st_mtime < cutoff:
                self._follow_from_end(key, stat.st_mtime)
            elif self._signatures.get(key) != signature:
                to_read.append(key)
            self._signatures[key] = signature
        self.first_start = False
        return to_read

    def _follow_from_end(self, key: str, mtime: float) -> None:
        """A file older than the backfill: its past is not published, but its project is known."""
        file = TranscriptFile(str(self.root / key))
        try:
            file.skip_to_end()
            with open(file.path, "rb") as handle:
                head = handle.read(HEAD_SCAN_BYTES)
        except OSError:
            return
        self.files[key] = file
        self._dirty = True
        for raw in head.split(b"\n")[:-1]:
            entry = parse_line(raw)
            if isinstance(entry, MessageLine) and entry.cwd is not None:
                self.outbox.extend(
                    self.tracker.known_conversation(entry.session_id, entry.cwd, round(mtime * 1000))
                )
                return

    def forget(self, key: str) -> None:
        if self.files.pop(key, None) is not None:
            self._dirty = True

    async def catch_up(self, keys: Iterable[str]) -> None:
        """Read the new lines of these files, yielding to the loop between reads."""
        for key in keys:
            if len(self.outbox) >= MAX_OUTBOX:
                self._rescan_due = True
                self._signatures.clear()  # files left unread must look changed to the next scan
                break
            while self.read_file(key) and len(self.outbox) < MAX_OUTBOX:
                self.flush()
                await asyncio.sleep(0)
            self.flush()
            await asyncio.sleep(0)
        self.save_if_due()

    def read_file(self, key: str) -> bool:
        """One bounded read of one file; True if it has more to read."""
        file = self.files.get(key) or TranscriptFile(str(self.root / key))
        try:
            chunk = file.read(self.max_line)
        except FileNotFoundError:
            self.forget(key)
            return False
        except OSError as exc:
            self._log_once(key, "unreadable", "cannot read %s: %s", key, exc.strerror)
            return False
        self.files[key] = file
        if chunk.restarted is not None:
            self.counts["restarted"] += 1
            log.info("%s was %s: reading it again from the start", key, chunk.restarted)
        if chunk.oversized:
            self.counts["oversized"] += chunk.oversized
            self.metrics.count(Count.WATCHER_SKIPPED, chunk.oversized)
            self._log_once(key, "oversized", "%s: skipped a line longer than %d bytes", key, self.max_line)
        if chunk.lines or chunk.restarted or chunk.oversized:
            self._dirty = True
        if chunk.lines:
            self.counts["lines"] += len(chunk.lines)
            self.metrics.count(Count.WATCHER_LINES, len(chunk.lines))
            before = self.tracker.skipped["malformed"]
            skipped_before = self.tracker.skipped.total()
            entries = [parse_line(line) for line in chunk.lines]
            self.outbox.extend(self.tracker.read(entries, _now_ms()))
            self.metrics.count(Count.WATCHER_SKIPPED, self.tracker.skipped.total() - skipped_before)
            if self.tracker.skipped["malformed"] > before:
                self._log_once(key, "malformed", "%s: skipped a line that is not a JSON object", key)
        return chunk.more

    def _log_once(self, key: str, what: str, message: str, *args: Any) -> None:
        if (key, what) in self._logged:
            return
        if len(self._logged) >= MAX_LOGGED_FILES:
            self._logged.clear()
        self._logged.add((key, what))
        log.warning(message + " (logged once per file; all are counted)", *args)

    # --- publishing ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand queued events to ZeroMQ; if its queue is full (ingest gone for long), keep them."""
        while self.outbox:
            event = self.outbox[0]
            try:
                self.producer.publish(event.type, event.data, event.timestamp)
            except TimeoutError:
                if not self._held_back_logged:
                    log.warning("the ingest is not taking events: holding %d back", len(self.outbox))
                    self._held_back_logged = True
                return
            self.outbox.popleft()
            self.counts["published"] += 1
            self.metrics.count(Count.WATCHER_EVENTS)
            self._dirty = True
        if self._held_back_logged:
            log.info("the ingest takes events again")
        self._held_back_logged = False

    def check_epoch(self) -> None:
        """Read the beats that came in; on a new ingest run, announce what the old one knew."""
        epoch = None
        while True:
            try:
                frames = self.bus.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) == 3 and frames[1] == BEAT_FRAME:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    epoch = orjson.loads(frames[2]).get("epoch")
        if not isinstance(epoch, str) or epoch == self.epoch:
            return
        if self.epoch is not None:
            log.info("the ingest started a new run (%s): announcing what it has to know again", epoch)
            self.outbox.extend(self.tracker.announce(_now_ms()))
        self.epoch = epoch
        self._dirty = True

    def tick(self) -> None:
        self.check_epoch()
        self.outbox.extend(self.tracker.tick(_now_ms()))
        self.flush()
        self.save_if_due()

    # --- watching ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        waiting_logged = False
        while not stop.is_set():
            if not self.root.is_dir():
                if not waiting_logged:
                    log.info("waiting for %s to appear", self.root)
                    waiting_logged = True
                await _sleep_unless(stop, self.settings.watch_poll_interval)
                continue
            waiting_logged = False
            await self.catch_up(self.scan())
            try:
                await (self._poll(stop) if self.polling else self._follow(stop))
            except (OSError, RuntimeError) as exc:
                if not self.root.is_dir():
                    continue
                if self.polling:
                    log.error("watching %s failed (%s): retrying", self.root, exc)
                    await _sleep_unless(stop, self.settings.watch_poll_interval)
                    continue
                log.warning(
                    "file-system notifications are unavailable (%s): polling %s every %gs",
                    exc,
                    self.root,
                    self.settings.watch_poll_interval,
                )
                self.polling = True

    async def _poll(self, stop: asyncio.Event) -> None:
        """Our own polling rather than watchfiles': its poller compares modification times to the
        second, so a line appended within the second of the previous change waited for another."""
        log.info("watching %s (polling every %gs)", self.root, self.settings.watch_poll_interval)
        while not stop.is_set():
            await _sleep_unless(stop, self.settings.watch_poll_interval)
            if not self.root.is_dir():
                log.warning("%s is gone: waiting for it to come back", self.root)
                return
            self._rescan_due = False
            await self.catch_up(self.scan())

    async def _follow(self, stop: asyncio.Event) -> None:
        log.info("watching %s (notifications)", self.root)
        scanned_at = time.monotonic()
        async for changes in awatch(
            self.root,
            watch_filter=is_transcript_or_folder,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=stop,
            force_polling=False,
            rust_timeout=round(TICK_INTERVAL * 1000),
            yield_on_timeout=True,
            ignore_permission_denied=True,
        ):
            keys = set()
            new_folder = False
            for change, path in changes:
                key = os.path.relpath(path, self.root)
                if change == Change.deleted and not os.path.exists(path):
                    self.forget(key)
                elif path.endswith(".jsonl"):
                    keys.add(key)
                else:
                    new_folder = True
            await self.catch_up(sorted(keys))
            caught_up = self._rescan_due and not self.outbox
            if caught_up or new_folder or time.monotonic() - scanned_at >= RESCAN_INTERVAL:
                self._rescan_due = False
                await self.catch_up(self.scan())
                scanned_at = time.monotonic()
            if not self.root.is_dir():
                log.warning("%s is gone: waiting for it to come back", self.root)
                return


def _now_ms() -> int:
    return round(time.time() * 1000)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _tick_forever(watcher: Watcher, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await _sleep_unless(stop, TICK_INTERVAL)
        watcher.tick()


async def serve(settings: Settings, metrics: MetricsRow, beat_fd: int | None, parent_pid: int | None) -> None:
    """Run until SIGTERM or SIGINT; without a beat pipe (``observatory watch``) nobody watches it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    state_path = (
        Path(settings.watch_state_file).expanduser()
        if settings.watch_state_file
        else default_state_path(os.environ)
    )
    try:
        state_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BootError(f"cannot create the folder of the state file {state_path}: {exc.strerror}") from None
    # send_timeout 0: a full queue comes back at once and the watcher keeps the events itself.
    curve = bus_keys(settings)
    client_keys = curve.client() if curve is not None else None
    producer = Producer(settings.ingest_endpoint, send_timeout=0.0, linger=2.0, curve=client_keys)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    bus = context.socket(zmq.SUB)
    if client_keys is not None:
        client_keys.apply(bus)
    bus.setsockopt(zmq.SUBSCRIBE, CONTROL_FRAME)
    bus.setsockopt(zmq.LINGER, 0)
    bus.connect(settings.bus_endpoint)
    watcher = Watcher(settings, producer, bus, state_path, metrics)
    liveness = Liveness(beat_fd, parent_pid, stop.set) if beat_fd is not None and parent_pid else None
    try:
        watcher.load_state()
        if liveness is not None:
            liveness.start()
        try:
            async with asyncio.TaskGroup() as group:  # either failing stops both, and the process
                group.create_task(watcher.run(stop))
                group.create_task(_tick_forever(watcher, stop))
        finally:
            stop.set()
            watcher.flush()
            watcher.save_state()
            log.info(
                "watcher stopped: %d lines read, %d events published, %d held back; lines passed over: %s",
                watcher.counts["lines"],
                watcher.counts["published"],
                len(watcher.outbox),
                dict(watcher.tracker.skipped) or "none",
            )
    finally:
        if liveness is not None:
            liveness.stop()
        producer.close()
        bus.close()
        context.term()
