"""``observatory status``: the live figures of a running server, in a terminal.

It reads the server's own /metrics, /health and /ready over HTTP (the port of the server's
configuration, or --url), so it shows exactly what a monitoring system would scrape.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from core.errors import ConfigError

TIMEOUT = 5.0
EXIT_UNREACHABLE = 1
EXIT_NOT_SERVING = 3  # it answered, unhealthy or not ready: scripts can tell from an absent server
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def read_metrics(text: str) -> Samples:
    """Sample name -> {sorted labels: value}."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


# Each line of the report: its label, and the figures on it (metric, what to call it).
ROWS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "connections",
        (
            ("connections_active", "open"),
            ("connections_peak", "peak"),
            ("connections_opened_total", "opened"),
            ("handshakes_refused_total", "refused"),
        ),
    ),
    ("subscriptions", (("subscriptions", "held"),)),
    (
        "events",
        (
            ("ingest_events_accepted_total", "in"),
            ("ingest_events_rejected_total", "rejected"),
            ("broadcasts_total", "broadcasts"),
        ),
    ),
    (
        "messages",
        (
            ("messages_sent_total", "sent"),
            ("messages_received_total", "received"),
            ("messages_failed_total", "failed"),
            ("messages_dropped_total", "dropped"),
        ),
    ),
    ("bytes", (("bytes_out_total", "out"), ("bytes_in_total", "in"), ("compressions_total", "deflate runs"))),
    (
        "trouble",
        (
            ("rate_limited_total", "rate-limited"),
            ("slow_consumers_total", "slow"),
            ("bus_gaps_repaired_total", "gaps repaired"),
            ("bus_events_lost_total", "lost"),
        ),
    ),
)


def render(base: str, metrics: Samples, health: dict[str, Any], ready: dict[str, Any]) -> str:
    def one(name: str) -> float:
        return sum(metrics.get(f"observatory_{name}", {}).values())

    def by_code(name: str) -> str:
        values = {
            dict(labels).get("code", "?"): v for labels, v in metrics.get(f"observatory_{name}", {}).items()
        }
        return ", ".join(f"{code} {value:.0f}" for code, value in sorted(values.items()) if value)

    readiness = "ready" if ready.get("ready") else f"NOT READY ({ready.get('reason')})"
    lines = [f"observatory at {base}: {health.get('status', '?')}, {readiness}", ""]
    for label, figures in ROWS:
        lines.append(f"  {label:<14}" + "  ".join(f"{one(name):>10.0f} {word}" for name, word in figures))
    broadcasts = one("broadcast_latency_seconds_count")
    if broadcasts:
        mean_ms = one("broadcast_latency_seconds_sum") / broadcasts * 1000
        buckets = sorted(
            (float(dict(labels)["le"]), count)
            for labels, count in metrics.get("observatory_broadcast_latency_seconds_bucket", {}).items()
        )
        p95_ms = next(bound for bound, count in buckets if count >= 0.95 * broadcasts) * 1000
        lines.append(
            f"  {'latency':<14}{mean_ms:>10.3f} ms mean, 95% within {p95_ms:g} ms (ingest to last write)"
        )
    for label, name in (("errors", "errors_total"), ("closes", "connections_closed_total")):
        if text := by_code(name):
            lines.append(f"  {label:<14}{text}")
    lines += ["", f"  {'process':<16}{'pid':>8}{'cpu s':>10}{'rss MiB':>10}"]
    for process in health.get("processes", []):
        rss_mib = process["rssBytes"] / 1_048_576
        lines.append(
            f"  {process['name']:<16}{process['pid']:>8}{process['cpuSeconds']:>10.2f}{rss_mib:>10.1f}"
        )
    for check in health.get("checks", []):
        if check.get("status") != "ok":
            lines.append(f"  {check['status']}: {check['name']}: {check['message']}")
    return "\n".join(lines)


def status_main(argv: Sequence[str]) -> int:
    from supervisor import settings_from

    parser = argparse.ArgumentParser(prog="observatory status", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE", help="the server's TOML config file (for its port)")
    parser.add_argument(
        "--url", help="the server's base address, e.g. http://10.0.0.5:8080 (default: from the config)"
    )
    parser.add_argument(
        "--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until interrupted"
    )
    args = parser.parse_args(argv)
    base = args.url
    if base is None:
        try:
            settings = settings_from(argparse.Namespace(config=args.config))
        except ConfigError as exc:
            print(f"observatory status: error: {exc}", file=sys.stderr)
            return 2
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        host = f"[{host}]" if ":" in host else host
        base = f"{'https' if settings.ssl_cert_path else 'http'}://{host}:{settings.port}"
    base = base.rstrip("/")
    try:
        while True:
            try:
                _, metrics = fetch(f"{base}/metrics")
                _, health_body = fetch(f"{base}/health")
                _, ready_body = fetch(f"{base}/ready")
                health, ready = orjson.loads(health_body), orjson.loads(ready_body)
                text = render(base, read_metrics(metrics.decode()), health, ready)
            except OSError as exc:
                print(
                    f"observatory status: no server at {base}: {getattr(exc, 'reason', exc)}", file=sys.stderr
                )
                return EXIT_UNREACHABLE
            except (ValueError, KeyError, TypeError) as exc:
                print(f"observatory status: {base} is not an observatory: {exc}", file=sys.stderr)
                return EXIT_UNREACHABLE
            if not args.watch:
                print(text)
                serving = health.get("status") != "unhealthy" and ready.get("ready")
                return 0 if serving else EXIT_NOT_SERVING
            print("\033[H\033[2J" + text, flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
