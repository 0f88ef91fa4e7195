"""Typed settings: defaults < TOML file < environment < command-line flags.

Every option is declared once, as a field of ``Settings`` with its environment variable, help text
and bounds in the field's metadata; the CLI flags, the validation and ``docs/configuration.md`` all
follow from that one declaration.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# inproc:// cannot cross processes, and the ingest and the workers are separate processes.
ZMQ_SCHEMES = ("tcp://", "ipc://")
WATCH_MODES = ("auto", "poll")
ROLES = ("all", "ingest", "workers", "watcher")
LOG_FORMATS = ("text", "json")


def _option(
    default: Any,
    env: str,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    meta = {"env": env, "help": help, "low": low, "high": high, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = _option("127.0.0.1", "WS_HOST", "Address the WebSocket workers listen on.")
    port: int = _option(8080, "WS_PORT", "TCP port shared by all workers (SO_REUSEPORT).", low=1, high=65535)
    workers: int = _option(
        0, "WS_WORKERS", "Number of WebSocket worker processes; 0 means one per CPU core.", low=0, high=512
    )
    max_connections: int = _option(
        1000,
        "WS_MAX_CONNECTIONS",
        "Most open WebSocket connections across all workers; past it a handshake gets 503.",
        low=1,
        high=10_000_000,
    )
    max_connections_per_ip: int = _option(
        10,
        "WS_MAX_CONNECTIONS_PER_IP",
        "Most open connections from one address; past it 429.",
        low=1,
        high=10**7,
    )
    max_handshakes_per_ip: int = _option(
        60,
        "WS_MAX_HANDSHAKES_PER_IP",
        "Most handshakes from one address per minute (refused ones included); past it 429.",
        low=1,
        high=10**9,
    )
    ssl_cert_path: str = _option(
        "", "SSL_CERT_PATH", "PEM certificate chain: serve wss:// (with ssl_key_path)."
    )
    ssl_key_path: str = _option("", "SSL_KEY_PATH", "PEM private key of ssl_cert_path.")
    log_level: str = _option("INFO", "LOG_LEVEL", "Logging level.", choices=LOG_LEVELS)

    auth: bool = _option(
        True,
        "OBSERVATORY_AUTH",
        "Require a JWT on every connection. Off is allowed on a loopback address, or with --insecure.",
    )
    insecure: bool = _option(
        False, "OBSERVATORY_INSECURE", "Allow auth=false on a non-loopback address (logged at every start)."
    )
    jwt_secret: str = _option(
        "",
        "OBSERVATORY_JWT_SECRET",
        "Shared HS256 secret. Empty, with no key file either: one is generated in the user's config "
        "directory on first start.",
    )
    jwt_secret_file: str = _option("", "OBSERVATORY_JWT_SECRET_FILE", "File holding the shared HS256 secret.")
    jwt_public_key_file: str = _option(
        "", "OBSERVATORY_JWT_PUBLIC_KEY_FILE", "PEM public key for RS256/ES256 tokens (instead of a secret)."
    )
    jwt_algorithms: str = _option(
        "",
        "OBSERVATORY_JWT_ALGORITHMS",
        "Comma-separated accepted algorithms; empty: HS256 with a secret, RS256,ES256 with a public key.",
    )
    jwt_audience: str = _option("", "OBSERVATORY_JWT_AUDIENCE", "Required aud claim (not checked if empty).")
    jwt_issuer: str = _option("", "OBSERVATORY_JWT_ISSUER", "Required iss claim (not checked if empty).")
    jwt_leeway: float = _option(
        30.0,
        "OBSERVATORY_JWT_LEEWAY",
        "Seconds of clock skew allowed on exp, nbf and iat.",
        low=0.0,
        high=3600.0,
    )
    allowed_origins: str = _option(
        "",
        "ALLOWED_ORIGINS",
        "Comma-separated browser origins allowed to connect; empty: only the server's own host; * any. "
        "Clients sending no Origin (non-browser) are always allowed.",
    )

    role: str = _option(
        "all",
        "OBSERVATORY_ROLE",
        "What this host runs: all (one machine), ingest, workers (the bus of a remote ingest), or "
        "watcher (pushing to a remote ingest).",
        choices=ROLES,
    )
    ingest_endpoint: str = _option(
        "tcp://127.0.0.1:5557",
        "OBSERVATORY_INGEST",
        "ZeroMQ PULL endpoint the ingest binds for producers (the watcher pushes to it).",
    )
    bus_endpoint: str = _option(
        "tcp://127.0.0.1:5558",
        "OBSERVATORY_BUS",
        "ZeroMQ PUB endpoint the ingest binds; workers (and the watcher) connect to it.",
    )
    query_endpoint: str = _option(
        "tcp://127.0.0.1:5559",
        "OBSERVATORY_QUERY",
        "ZeroMQ ROUTER endpoint the ingest binds to answer the workers' state queries.",
    )
    curve_secret_key_file: str = _option(
        "",
        "OBSERVATORY_CURVE_SECRET_KEY_FILE",
        "This host's CURVE secret certificate (observatory keys); set, the bus is encrypted and "
        "authenticated.",
    )
    curve_server_key_file: str = _option(
        "",
        "OBSERVATORY_CURVE_SERVER_KEY_FILE",
        "Workers and watcher hosts: the ingest's CURVE public certificate (empty: this host's own).",
    )
    curve_authorized_dir: str = _option(
        "",
        "OBSERVATORY_CURVE_AUTHORIZED_DIR",
        "Ingest host: a folder of the CURVE public certificates allowed to connect (besides its own).",
    )
    bus_high_water_mark: int = _option(
        100_000,
        "OBSERVATORY_BUS_HWM",
        "ZeroMQ high-water mark (messages) of the bus sockets; past it PUB/SUB drops.",
        low=1,
        high=100_000_000,
    )
    history_size: int = _option(
        100_000,
        "OBSERVATORY_HISTORY_SIZE",
        "Recent events the ingest keeps for gap repair and resume.",
        low=1,
        high=100_000_000,
    )
    history_age: float = _option(
        3600.0,
        "OBSERVATORY_HISTORY_AGE",
        "Seconds an event stays in the ingest's history (whichever bound comes first).",
        low=1.0,
        high=30 * 86_400.0,
    )
    bus_beat_interval: float = _option(
        1.0,
        "OBSERVATORY_BUS_BEAT",
        "Seconds between the ingest's beats on the bus (epoch and newest seq): how soon a lost last "
        "event or a new epoch is noticed.",
        low=0.05,
        high=60.0,
    )
    repair_timeout: float = _option(
        2.0,
        "OBSERVATORY_REPAIR_TIMEOUT",
        "Seconds a worker waits for history to fill a hole before it gives those events up as lost.",
        low=0.05,
        high=300.0,
    )
    max_event_bytes: int = _option(
        1_048_576,
        "OBSERVATORY_MAX_EVENT_BYTES",
        "Largest producer message (one ZeroMQ frame) the ingest accepts.",
        low=256,
        high=256 * 1_048_576,
    )

    max_message_bytes: int = _option(
        65_536,
        "WS_MAX_MESSAGE_BYTES",
        "Largest client WebSocket message (after reassembly of fragments); larger closes with 1009.",
        low=1024,
        high=64 * 1_048_576,
    )
    max_subscriptions: int = _option(
        50, "WS_MAX_SUBSCRIPTIONS", "Most subscriptions one connection may hold.", low=1, high=10_000
    )
    max_filter_values: int = _option(
        100, "WS_MAX_FILTER_VALUES", "Most values in one filter kind of a subscription.", low=1, high=100_000
    )
    message_rate_limit: int = _option(
        100, "WS_MESSAGE_RATE_LIMIT", "Client messages allowed per minute, per connection.", low=1, high=10**9
    )
    message_rate_burst: int = _option(
        20,
        "WS_MESSAGE_RATE_BURST",
        "Client messages allowed at once: the size of the per-connection token bucket.",
        low=1,
        high=10**9,
    )
    max_pending_bytes: int = _option(
        8 * 1_048_576,
        "WS_MAX_PENDING_BYTES",
        "Most unsent output one client may have queued; a client that falls further behind is closed "
        "with 1013 so it never slows the others.",
        low=65_536,
        high=1 << 34,
    )
    heartbeat_interval: float = _option(
        30.0,
        "WS_HEARTBEAT_INTERVAL",
        "Seconds of silence from a client before the server pings it.",
        low=0.1,
        high=3600.0,
    )
    heartbeat_timeout: float = _option(
        10.0,
        "WS_HEARTBEAT_TIMEOUT",
        "Seconds a pinged client has to answer before it is disconnected.",
        low=0.1,
        high=3600.0,
    )
    handshake_timeout: float = _option(
        5.0, "WS_HANDSHAKE_TIMEOUT", "Seconds a client has to finish the HTTP upgrade.", low=0.1, high=300.0
    )
    query_timeout: float = _option(
        5.0,
        "OBSERVATORY_QUERY_TIMEOUT",
        "Seconds a worker waits for the ingest to answer a query before replying QUERY_TIMEOUT.",
        low=0.05,
        high=300.0,
    )

    max_active_conversations: int = _option(
        10_000,
        "OBSERVATORY_MAX_ACTIVE_CONVERSATIONS",
        "Active conversations the ingest tracks; past it the least recently active is forgotten.",
        low=1,
        high=10_000_000,
    )
    activity_retention: float = _option(
        86_400.0,
        "OBSERVATORY_ACTIVITY_RETENTION",
        "Seconds of per-project activity the ingest keeps for get_project_activity.",
        low=60.0,
        high=90 * 86_400.0,
    )
    activity_bucket: float = _option(
        60.0,
        "OBSERVATORY_ACTIVITY_BUCKET",
        "Width in seconds of one per-project activity bucket.",
        low=1.0,
        high=86_400.0,
    )

    watch: bool = _option(
        True, "OBSERVATORY_WATCH", "Run the transcript watcher, which publishes Claude Code activity."
    )
    transcripts_dir: str = _option(
        "~/.claude/projects",
        "OBSERVATORY_TRANSCRIPTS_DIR",
        "Folder of Claude Code transcripts the watcher reads (one sub-folder per project).",
    )
    watch_mode: str = _option(
        "auto",
        "OBSERVATORY_WATCH_MODE",
        "auto: file-system notifications, polling where they are unavailable; poll: always poll.",
        choices=WATCH_MODES,
    )
    watch_poll_interval: float = _option(
        1.0,
        "OBSERVATORY_WATCH_POLL_INTERVAL",
        "Seconds between polls when polling, and between the checks for a missing transcripts_dir.",
        low=0.05,
        high=60.0,
    )
    watch_backfill: float = _option(
        86_400.0,
        "OBSERVATORY_WATCH_BACKFILL",
        "On the first start (no state file), publish the conversations whose transcript changed in the "
        "last this many seconds; 0 publishes only what is written from now on.",
        low=0.0,
        high=365 * 86_400.0,
    )
    watch_state_file: str = _option(
        "",
        "OBSERVATORY_WATCH_STATE_FILE",
        "Where the watcher keeps its read offsets, so a restart publishes nothing twice; empty: "
        "$XDG_STATE_HOME/observatory/watcher-state.json (~/.local/state/...).",
    )
    conversation_idle_timeout: float = _option(
        600.0,
        "OBSERVATORY_CONVERSATION_IDLE_TIMEOUT",
        "Seconds without a new line after which a conversation is reported ended.",
        low=1.0,
        high=7 * 86_400.0,
    )
    analytics_interval: float = _option(
        10.0,
        "OBSERVATORY_ANALYTICS_INTERVAL",
        "Seconds between analytics_update (and project_updated) reports of the watcher.",
        low=0.1,
        high=86_400.0,
    )
    max_transcript_line_bytes: int = _option(
        16 * 1_048_576,
        "OBSERVATORY_MAX_TRANSCRIPT_LINE_BYTES",
        "Longest transcript line the watcher reads; a longer one is skipped and counted.",
        low=4096,
        high=1 << 30,
    )

    health_memory_bytes: int = _option(
        1 << 30,
        "OBSERVATORY_HEALTH_MEMORY_BYTES",
        "/health warns when the server's processes together hold more resident memory than this.",
        low=1 << 20,
        high=1 << 44,
    )
    health_error_rate: float = _option(
        0.05,
        "OBSERVATORY_HEALTH_ERROR_RATE",
        "/health is unhealthy (503) when more than this share of client messages got an error in the "
        "last minute.",
        low=0.0,
        high=1.0,
    )
    health_latency_ms: float = _option(
        100.0,
        "OBSERVATORY_HEALTH_LATENCY_MS",
        "/health warns when the mean broadcast latency of the last minute is above this.",
        low=0.001,
        high=600_000.0,
    )
    log_format: str = _option(
        "text",
        "LOG_FORMAT",
        "text: one readable line per record; json: one JSON object per line, for log shippers.",
        choices=LOG_FORMATS,
    )
    access_log: bool = _option(
        True, "OBSERVATORY_ACCESS_LOG", "Log one line per closed WebSocket connection (never its token)."
    )
    permessage_deflate: bool = _option(
        True, "WS_PERMESSAGE_DEFLATE", "Offer compression (RFC 7692) to clients that ask for it."
    )
    compression_threshold: int = _option(
        1024,
        "WS_COMPRESSION_THRESHOLD",
        "Messages shorter than this many bytes are sent uncompressed.",
        low=0,
        high=1 << 30,
    )
    compression_level: int = _option(
        3,
        "WS_COMPRESSION_LEVEL",
        "zlib level of outgoing compression (1 fastest, 9 smallest).",
        low=1,
        high=9,
    )

    flush_interval: float = _option(
        0.0,
        "WS_FLUSH_INTERVAL",
        "Seconds a client's frames may wait to share one write with the next events; 0: written at "
        "the end of each bus batch, never waiting (a lower latency for more CPU).",
        low=0.0,
        high=1.0,
    )

    drain_window: float = _option(
        5.0,
        "OBSERVATORY_DRAIN_WINDOW",
        "Seconds over which a stopping worker closes its clients (each told to come back after a delay "
        "spread over the same span), so they do not all reconnect at once.",
        low=0.0,
        high=3600.0,
    )
    graceful_timeout: float = _option(
        10.0,
        "OBSERVATORY_GRACEFUL_TIMEOUT",
        "Seconds the supervisor waits for children to exit after SIGTERM before it kills them.",
        low=0.1,
        high=3600.0,
    )
    worker_timeout: float = _option(
        30.0,
        "OBSERVATORY_WORKER_TIMEOUT",
        "Seconds without a liveness beat from a child's event loop before the supervisor kills it.",
        low=3.0,
        high=3600.0,
    )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class OptionSpec:
    name: str
    kind: type
    default: Any
    env: str
    help: str
    low: float | None
    high: float | None
    choices: tuple[str, ...] | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _type_of(annotation: Any) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(annotation)]


OPTIONS: tuple[OptionSpec, ...] = tuple(
    OptionSpec(
        name=f.name,
        kind=_type_of(f.type),
        default=f.default,
        env=f.metadata["env"],
        help=f.metadata["help"],
        low=f.metadata["low"],
        high=f.metadata["high"],
        choices=f.metadata["choices"],
    )
    for f in dataclasses.fields(Settings)
)
OPTIONS_BY_NAME: dict[str, OptionSpec] = {o.name: o for o in OPTIONS}


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _from_text(spec: OptionSpec, text: str, source: str) -> Any:
    raw = text.strip()
    try:
        if spec.kind is int:
            return int(raw, 10)
        if spec.kind is float:
            return float(raw)
        if spec.kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(
            f"invalid value for {spec.name} (from {source}): {text!r} is not {_KIND_NAMES[spec.kind]}"
        ) from None
    return raw


def _from_toml(spec: OptionSpec, value: Any, source: str) -> Any:
    ok = (isinstance(value, spec.kind) and not (spec.kind is int and isinstance(value, bool))) or (
        spec.kind is float and isinstance(value, int) and not isinstance(value, bool)
    )
    if not ok:
        raise ConfigError(
            f"invalid value for {spec.name} (from {source}): {value!r} is not {_KIND_NAMES[spec.kind]}"
        )
    return float(value) if spec.kind is float else value


def _check(spec: OptionSpec, value: Any, source: str) -> Any:
    if spec.kind is float and math.isnan(value):
        # NaN compares false with every bound, so the range checks below would let it through.
        raise ConfigError(f"invalid value for {spec.name} (from {source}): nan is not a number")
    if spec.choices is not None:
        value = str(value).upper() if spec.name == "log_level" else value
        if value not in spec.choices:
            raise ConfigError(
                f"invalid value for {spec.name} (from {source}): {value!r}; expected one of "
                + ", ".join(spec.choices)
            )
    if spec.low is not None and value < spec.low:
        raise ConfigError(f"invalid value for {spec.name} (from {source}): {value} is below {spec.low:g}")
    if spec.high is not None and value > spec.high:
        raise ConfigError(f"invalid value for {spec.name} (from {source}): {value} is above {spec.high:g}")
    if spec.name.endswith("_endpoint") and not value.startswith(ZMQ_SCHEMES):
        raise ConfigError(
            f"invalid value for {spec.name} (from {source}): {value!r} is not a ZeroMQ endpoint "
            "(tcp://host:port, ipc://path)"
        )
    return value


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc}") from None
    unknown = sorted(set(table) - set(OPTIONS_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown option(s) in config file {source}: {', '.join(unknown)}")
    return table


def load_settings(
    *,
    toml_text: str | None = None,
    toml_source: str = "config file",
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Settings:
    """Merge the layers in precedence order and validate every value, naming its source on error."""
    values: dict[str, Any] = {}
    if toml_text is not None:
        for name, value in parse_toml(toml_text, toml_source).items():
            spec = OPTIONS_BY_NAME[name]
            values[name] = _check(spec, _from_toml(spec, value, toml_source), toml_source)
    for spec in OPTIONS:
        if env is not None and spec.env in env:
            values[spec.name] = _check(spec, _from_text(spec, env[spec.env], spec.env), spec.env)
        flag_value = None if flags is None else flags.get(spec.name)
        if flag_value is not None:
            values[spec.name] = _check(spec, _from_text(spec, flag_value, spec.flag), spec.flag)
    return _check_together(Settings(**values))


def _check_together(settings: Settings) -> Settings:
    """Constraints between options, which no single option's bounds can express."""
    if settings.drain_window + 2 > settings.graceful_timeout:
        raise ConfigError(
            f"drain_window ({settings.drain_window:g}) must leave graceful_timeout "
            f"({settings.graceful_timeout:g}) at least 2 s more, or the supervisor kills workers mid-drain"
        )
    if bool(settings.ssl_cert_path) != bool(settings.ssl_key_path):
        raise ConfigError("ssl_cert_path and ssl_key_path go together: give both or neither")
    if (
        settings.curve_server_key_file or settings.curve_authorized_dir
    ) and not settings.curve_secret_key_file:
        raise ConfigError(
            "curve_server_key_file and curve_authorized_dir need curve_secret_key_file: this host's own key"
        )
    if settings.heartbeat_timeout > settings.heartbeat_interval:
        # A pinged client answers within the idle span, so a dead peer is found within twice the
        # interval; a longer timeout would mostly keep dead connections open.
        raise ConfigError(
            f"heartbeat_timeout ({settings.heartbeat_timeout:g}) must not exceed heartbeat_interval "
            f"({settings.heartbeat_interval:g})"
        )
    return settings
