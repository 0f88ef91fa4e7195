"""observatory: the supervisor that forks and watches the ingest and the WebSocket workers.

The pre-fork model of gunicorn's arbiter: signal handlers only enqueue, and one main loop acts on
the queue, reaps children, restarts the dead with backoff, and kills a child whose event loop
stopped beating. A child that cannot boot exits with EXIT_BOOT_ERROR and the supervisor stops
everything instead of respawning it forever. Children die with the supervisor (PR_SET_PDEATHSIG,
and a parent check on every beat), so nothing is orphaned even by ``kill -9``.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.auth import PERMISSIONS, mint_token
from core.config import OPTIONS, Settings, load_settings
from core.errors import BootError, ConfigError
from core.transcripts import project_id_for
from workers.child import EXIT_BOOT_ERROR, die_with_parent, run_child, set_process_name
from workers.curve import bus_keys
from workers.keys import AuthSetup, load_auth
from workers.logs import setup_logging
from workers.shared import SharedCounters, SharedMetrics

log = logging.getLogger("observatory.supervisor")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)
STABLE_AFTER = 10.0  # a child that lived this long resets its slot's restart backoff
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
CRASH_LOOP_LIMIT = 5  # this many short lives in a row and a slot is given up
EXIT_CRASH_LOOP = 4
LOCAL_TOKEN_TTL = 7 * 86_400.0


@dataclass(slots=True)
class Slot:
    """A place for one child: the ingest, or worker ``index``. Restarts keep the slot."""

    role: str
    index: int
    pid: int | None = None
    beat_fd: int | None = None
    started: float = 0.0
    last_beat: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    generation: int = 0  # bumped at each start: a successor never shares its predecessor's counters
    abandoned: bool = False  # a crash loop: no more restarts
    # Predecessors still draining after a rolling restart: pid -> (beat fd, when to kill it).
    retiring: dict[int, tuple[int, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.role if self.role != "worker" else f"worker {self.index}"


@dataclass
class Supervisor:
    settings: Settings
    auth: AuthSetup
    slots: list[Slot] = field(default_factory=list)
    signal_queue: list[int] = field(default_factory=list)
    running: bool = False
    exit_code: int = 0

    def __post_init__(self) -> None:
        role = self.settings.role
        if role in ("all", "ingest"):
            self.slots.append(Slot("ingest", 0))
        if role in ("all", "workers"):
            self.slots += [Slot("worker", i) for i in range(1, self.settings.workers + 1)]
        if role == "watcher" or (role == "all" and self.settings.watch):
            self.slots.append(Slot("watcher", 0))
        # Made before any fork, so every worker maps the same memory; two rows a slot, so that during a
        # rolling restart the successor and its draining predecessor each count their own.
        self.counters = SharedCounters(2 * self.settings.workers)
        # Every process's counts: the worker rows as above, then the ingest's and the watcher's.
        self.metrics = SharedMetrics(2 * self.settings.workers + 2)
        self.roll_queue: list[Slot] = []
        self.rolling: tuple[Slot, int] | None = None
        self.selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()

    # --- main loop ----------------------------------------------------------------------------

    def run(self) -> int:
        set_process_name("observatory")
        self._install_signals()
        log.info("%s", describe(self.settings, [slot.role for slot in self.slots]))
        self.running = True
        for slot in self.slots:  # the ingest first: workers connect to its bus
            self._spawn(slot)
        while self.running:
            self._wait(1.0)
            self._handle_signals()
            self._reap(restart=self.running)
            self._check_liveness()
            self._respawn_due()
            self._advance_roll()
        self._stop_children()
        log.info("observatory stopped (exit %d)", self.exit_code)
        return self.exit_code

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._enqueue_signal)

    def _enqueue_signal(self, signum: int, _frame: object) -> None:
        self.signal_queue.append(signum)

    def _wait(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            slot = key.data
            try:
                chunk = os.read(key.fd, 4096)
            except BlockingIOError:
                continue
            if slot is not None and chunk:
                slot.last_beat = time.monotonic()

    def _handle_signals(self) -> None:
        while self.signal_queue:
            signum = self.signal_queue.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                log.info("%s: stopping", signal.Signals(signum).name)
                self.running = False
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: restarting workers one at a time")
                self.roll_queue = [s for s in self.slots if s.role == "worker" and s.pid is not None]

    # --- children -----------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        beat_r, beat_w = os.pipe()
        slot.generation += 1
        sys.stdout.flush()
        sys.stderr.flush()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(beat_r)
                self._become_child()
                code = self._child_main(slot, beat_w, parent_pid)
            finally:
                os._exit(code)
        os.close(beat_w)
        os.set_blocking(beat_r, False)
        now = time.monotonic()
        slot.pid, slot.beat_fd, slot.started, slot.last_beat, slot.restart_at = pid, beat_r, now, now, None
        self.selector.register(beat_r, selectors.EVENT_READ, slot)
        log.info("started %s (pid %d)", slot.name, pid)

    def _become_child(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for other in self.slots:
            if other.beat_fd is not None:
                os.close(other.beat_fd)
            for fd, _ in other.retiring.values():
                os.close(fd)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        self.selector.close()

    def _child_main(self, slot: Slot, beat_fd: int, parent_pid: int) -> int:
        from workers import ingest, watcher, worker
        from workers.logs import set_role

        set_role(slot.name)
        set_process_name("obs-" + slot.name.replace(" ", "-"))
        die_with_parent(parent_pid)
        if slot.role == "ingest":
            ingest_row = self.metrics.row(2 * self.settings.workers)
            return run_child(slot.name, lambda: ingest.serve(self.settings, ingest_row, beat_fd, parent_pid))
        if slot.role == "watcher":
            watcher_row = self.metrics.row(2 * self.settings.workers + 1)
            return run_child(
                slot.name, lambda: watcher.serve(self.settings, watcher_row, beat_fd, parent_pid)
            )
        row_index = self._row_of(slot, slot.generation)
        row, metrics = self.counters.writer(row_index), self.metrics.row(row_index)
        return run_child(
            slot.name,
            lambda: worker.serve(self.settings, self.auth, row, metrics, slot.index, beat_fd, parent_pid),
        )

    def _slot_of(self, pid: int) -> Slot | None:
        return next((s for s in self.slots if s.pid == pid), None)

    def _reap(self, restart: bool) -> None:
        """Collect exited children; with ``restart``, schedule each slot's next start."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self._retired(pid, status):
                continue
            slot = self._slot_of(pid)
            if slot is None:
                continue
            self._forget(slot)
            if slot.role == "worker":
                self._clear_rows(slot, slot.generation)
            lived = time.monotonic() - slot.started
            how = _describe_status(status)
            if not restart:
                log.info("%s (pid %d) %s", slot.name, pid, how)
                continue
            cannot_boot = os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_ERROR
            if cannot_boot and slot.role == "watcher" and self.settings.role == "all":
                # The server is whole without it: serve on, and say so, rather than stop.
                slot.abandoned = True
                log.error("the transcript watcher (pid %d) cannot boot: serving without it", pid)
                continue
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_ERROR:
                log.error("%s (pid %d) cannot boot; stopping observatory", slot.name, pid)
                self.exit_code = EXIT_BOOT_ERROR
                self.running = False
                continue
            slot.failures = 0 if lived >= STABLE_AFTER else slot.failures + 1
            if slot.failures >= CRASH_LOOP_LIMIT:
                self._abandon(slot, pid, how)
                continue
            delay = 0.0 if slot.failures == 0 else min(BACKOFF_FIRST * 2 ** (slot.failures - 1), BACKOFF_MAX)
            slot.restart_at = time.monotonic() + delay
            log.warning("%s (pid %d) %s after %.1fs; restarting in %.2fs", slot.name, pid, how, lived, delay)

    def _abandon(self, slot: Slot, pid: int, how: str) -> None:
        slot.abandoned = True
        log.error(
            "%s (pid %d) %s: it died %d times in a row within %.0fs of starting; no more restarts",
            slot.name,
            pid,
            how,
            slot.failures,
            STABLE_AFTER,
        )
        workers = [s for s in self.slots if s.role == "worker"]
        if slot.role == "watcher" and self.settings.role == "all":
            log.error("serving without the transcript watcher")
        elif slot.role != "worker" or all(s.abandoned for s in workers):
            # A host whose one job is gone stops, so that its service manager sees it.
            what = {"ingest": "its ingest", "watcher": "its watcher"}.get(slot.role, "workers")
            log.error("observatory cannot run without %s: stopping", what)
            self.exit_code = EXIT_CRASH_LOOP
            self.running = False

    def _retired(self, pid: int, status: int) -> bool:
        for slot in self.slots:
            if pid in slot.retiring:
                fd, _ = slot.retiring.pop(pid)
                self.selector.unregister(fd)
                os.close(fd)
                self._clear_rows(slot, slot.generation - 1)  # the predecessor ran one generation back
                log.info("%s's predecessor (pid %d) %s", slot.name, pid, _describe_status(status))
                return True
        return False

    def _row_of(self, slot: Slot, generation: int) -> int:
        """The shared row a worker of this slot and generation writes (two rows a slot, alternating)."""
        return 2 * (slot.index - 1) + generation % 2

    def _clear_rows(self, slot: Slot, generation: int) -> None:
        """A worker is gone: what it counted as open (connections, addresses, subscriptions) is not,
        or it would hold the admission limits and the gauges until its row is used again."""
        row = self._row_of(slot, generation)
        self.counters.clear(row)
        self.metrics.clear_levels(row)

    def _advance_roll(self) -> None:
        """Rolling restart: start a successor, and once it beats, tell the old worker to hand over."""
        if self.rolling is not None:
            slot, old_pid = self.rolling
            if slot.pid is None or slot.last_beat <= slot.started:
                return  # the successor is not up yet
            fd, _ = slot.retiring[old_pid]
            slot.retiring[old_pid] = (fd, time.monotonic() + self.settings.graceful_timeout)
            _kill(old_pid, signal.SIGUSR2)
            self.rolling = None
        while self.rolling is None and self.roll_queue and self.running:
            slot = self.roll_queue.pop(0)
            if slot.pid is None or slot.abandoned or slot.beat_fd is None:
                continue
            old_pid = slot.pid
            self.selector.modify(slot.beat_fd, selectors.EVENT_READ, None)  # its beats no longer count
            slot.retiring[old_pid] = (slot.beat_fd, float("inf"))
            slot.pid = slot.beat_fd = None
            self._spawn(slot)
            self.rolling = (slot, old_pid)

    def _forget(self, slot: Slot) -> None:
        if slot.beat_fd is not None:
            self.selector.unregister(slot.beat_fd)
            os.close(slot.beat_fd)
        slot.pid = slot.beat_fd = None

    def _check_liveness(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            for pid, (_, kill_at) in slot.retiring.items():
                if now > kill_at:
                    log.warning("%s's predecessor (pid %d) is still draining: killing it", slot.name, pid)
                    _kill(pid, signal.SIGKILL)
        for slot in self.slots:
            if slot.pid is not None and now - slot.last_beat > self.settings.worker_timeout:
                log.error(
                    "%s (pid %d) missed its beats for %.0fs: killing it",
                    slot.name,
                    slot.pid,
                    now - slot.last_beat,
                )
                _kill(slot.pid, signal.SIGKILL)
                slot.last_beat = now  # one kill per timeout; the reaper restarts it

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if (
                slot.pid is None
                and not slot.abandoned
                and slot.restart_at is not None
                and now >= slot.restart_at
            ):
                self._spawn(slot)

    def _wait_for(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self._wait(0.05)
            self._reap(restart=False)

    def _stop_children(self) -> None:
        """The watcher first (it flushes to the ingest), workers next (they tell their clients), then
        the ingest; SIGKILL what overstays."""
        for role in ("watcher", "worker", "ingest"):
            group = [s for s in self.slots if s.role == role]

            def alive(group: list[Slot] = group) -> list[int]:
                return [pid for s in group for pid in ([s.pid] if s.pid else []) + list(s.retiring)]

            for pid in alive():
                _kill(pid, signal.SIGTERM)
            self._wait_for(lambda: not alive(), self.settings.graceful_timeout)
            for pid in alive():
                log.warning("pid %d did not stop in time: killing it", pid)
                _kill(pid, signal.SIGKILL)
            self._wait_for(lambda: not alive(), 5.0)


def _kill(pid: int | None, signum: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="observatory",
        description="Real-time broadcast server for Claude Code Observatory (docs/configuration.md).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file of options (keys as below, with _).")
    for option in OPTIONS:
        # A bare boolean flag (--insecure) means true; --auth false turns one off.
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if option.kind is bool else {}
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar=option.kind.__name__.upper(),
            help=f"{option.help} [env {option.env}; default {option.default!r}]",
            **extra,
        )
    return parser


def load_from_command_line(argv: Sequence[str] | None) -> Settings:
    return settings_from(build_parser().parse_args(argv))


def settings_from(args: argparse.Namespace) -> Settings:
    toml_text = None
    if args.config is not None:
        try:
            toml_text = Path(args.config).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {args.config}: {exc.strerror}") from None
    flags = {o.name: getattr(args, o.name, None) for o in OPTIONS}
    settings = load_settings(toml_text=toml_text, toml_source=str(args.config), env=os.environ, flags=flags)
    if settings.workers == 0:
        settings = settings.replace(
            workers=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
    return settings


def check_port_free(host: str, port: int) -> None:
    """Fail fast if anything, even another observatory, holds the port.

    The workers bind with SO_REUSEPORT, which would silently share the port with a second copy of
    observatory run by the same user; a plain bind first turns that into a clear error.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BootError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise BootError(f"cannot listen on {host}:{port}: {reason}") from None


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_exposure(settings: Settings) -> None:
    """Secure by default: serving without authentication beyond this machine takes --insecure."""
    if settings.auth or is_loopback(settings.host):
        return
    if not settings.insecure:
        raise ConfigError(
            f"refusing to serve {settings.host} without authentication: turn auth on, listen on a "
            "loopback address, or pass --insecure"
        )


def local_addresses(settings: Settings, auth: AuthSetup) -> tuple[str, str | None]:
    """The dashboard's address and a WebSocket address, carrying an admin token when this server
    can mint one, the way Jupyter prints its address. The dashboard's token rides in the fragment,
    which browsers never send, so it stays out of every log."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address in a URL
    authority = f"{host}:{settings.port}"
    web = f"{'https' if settings.ssl_cert_path else 'http'}://{authority}/"
    if auth.signing_key is None:
        return web, None
    token = mint_token(
        auth.signing_key,
        auth.algorithm,
        user="local",
        projects=None,
        permissions=["admin"],
        ttl=LOCAL_TOKEN_TTL,
        audience=settings.jwt_audience or None,
        issuer=settings.jwt_issuer or None,
    )
    return f"{web}#token={token}", f"{scheme_of(settings)}://{authority}/?token={token}"


def describe(settings: Settings, roles: Sequence[str]) -> str:
    """What this host runs, in one line for the log."""
    parts = []
    if "ingest" in roles:
        parts.append(
            f"ingest: producers push to {settings.ingest_endpoint}, bus {settings.bus_endpoint}, "
            f"queries {settings.query_endpoint}"
        )
    workers = roles.count("worker")
    if workers:
        where = f"{scheme_of(settings)}://{settings.host}:{settings.port}/"
        bus = "" if "ingest" in roles else f" from the bus at {settings.bus_endpoint}"
        parts.append(f"{workers} workers serving {where}{bus}")
    if "watcher" in roles:
        parts.append(f"watching {settings.transcripts_dir}, pushing to {settings.ingest_endpoint}")
    secured = "; bus secured with CURVE" if settings.curve_secret_key_file else ""
    return f"observatory ({settings.role}): " + "; ".join(parts) + secured


def scheme_of(settings: Settings) -> str:
    return "wss" if settings.ssl_cert_path else "ws"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["token"]:
        return token_main(arguments[1:])
    if arguments[:1] == ["watch"]:
        return watch_main(arguments[1:])
    if arguments[:1] == ["status"]:
        from workers.status import status_main

        return status_main(arguments[1:])
    if arguments[:1] == ["keys"]:
        from workers.curve import keys_main

        return keys_main(arguments[1:])
    try:
        settings = load_from_command_line(arguments)
        serves_websockets = settings.role in ("all", "workers")
        if serves_websockets:
            check_exposure(settings)
        # Only the workers check tokens: an ingest or watcher host needs no key, nor makes one.
        auth = load_auth(settings, os.environ) if serves_websockets else AuthSetup(None, None)
    except ConfigError as exc:
        print(f"observatory: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, "supervisor", settings.log_format)
    try:
        bus_keys(settings)  # a bad certificate stops the start here, not in every child
        if serves_websockets:
            check_port_free(settings.host, settings.port)
    except BootError as exc:
        log.error("%s", exc)
        return EXIT_BOOT_ERROR
    if not serves_websockets:
        return Supervisor(settings, auth).run()
    if not settings.auth:
        log.warning(
            "authentication is OFF: anyone who can reach %s:%d sees every event", settings.host, settings.port
        )
    if auth.generated_at is not None:
        log.info("generated a token secret in %s (readable by you only)", auth.generated_at)
    dashboard, address = local_addresses(settings, auth)
    if settings.log_format == "json":
        # Logs in JSON go to a shipper: the token-bearing addresses are for a person at a terminal.
        log.info(
            "dashboard at %s; mint a token with: observatory token --all-projects", dashboard.split("#")[0]
        )
    else:
        print(f"observatory: dashboard at {dashboard}", file=sys.stderr, flush=True)
        if address is not None:
            print(f"observatory: connect with {address}", file=sys.stderr, flush=True)
    return Supervisor(settings, auth).run()


def watch_main(argv: Sequence[str]) -> int:
    """``observatory watch``: only the transcript watcher, pushing to an ingest elsewhere (a team's
    server): each member's machine runs one, with ``--ingest-endpoint tcp://server:5557``."""
    from workers import watcher

    try:
        settings = load_from_command_line(argv)
    except ConfigError as exc:
        print(f"observatory watch: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, "watcher", settings.log_format)
    log.info("watching %s; pushing to %s", settings.transcripts_dir, settings.ingest_endpoint)
    # Alone, nobody reads its counts; they still need a row to go to.
    counts = SharedMetrics(1).row(0)
    return run_child("watcher", lambda: watcher.serve(settings, counts, None, None))


def token_main(argv: Sequence[str]) -> int:
    """``observatory token``: mint a token for another user or tool with the server's secret."""
    parser = argparse.ArgumentParser(prog="observatory token", description=token_main.__doc__)
    parser.add_argument("--config", metavar="FILE", help="the server's TOML config file")
    parser.add_argument("--user", default="local", help="the sub claim (default: local)")
    parser.add_argument(
        "--project",
        type=int,
        action="append",
        dest="projects",
        metavar="ID",
        help="a project the token may see (repeat for several)",
    )
    parser.add_argument(
        "--project-dir",
        action="append",
        dest="project_dirs",
        default=[],
        metavar="PATH",
        help="a project by its working directory, as the transcript watcher names it (repeat for several)",
    )
    parser.add_argument("--all-projects", action="store_true", help='every project (projectIds: "*")')
    parser.add_argument(
        "--permission",
        action="append",
        dest="permissions",
        choices=sorted(PERMISSIONS),
        help="subscribe, query or admin (repeat; default: subscribe and query)",
    )
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")
    parser.add_argument("--session", help="the sid claim, so the session can be revoked")
    args = parser.parse_args(argv)
    args.projects = (args.projects or []) + [project_id_for(path) for path in args.project_dirs]
    if not args.projects and not args.all_projects:
        parser.error("name at least one --project or --project-dir, or --all-projects")
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    try:
        settings = settings_from(argparse.Namespace(config=args.config))
        auth = load_auth(settings.replace(auth=True), os.environ)
    except ConfigError as exc:
        print(f"observatory token: error: {exc}", file=sys.stderr)
        return 2
    if auth.signing_key is None:
        print(
            "observatory token: error: this server verifies tokens with a public key; mint them where the "
            "private key is",
            file=sys.stderr,
        )
        return 2
    print(
        mint_token(
            auth.signing_key,
            auth.algorithm,
            user=args.user,
            projects=None if args.all_projects else args.projects,
            permissions=args.permissions or ("subscribe", "query"),
            ttl=args.ttl,
            session=args.session,
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
