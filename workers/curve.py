"""The bus across hosts, with ZeroMQ's CURVE: the ingest's sockets encrypt and prove the ingest's
identity, and a ZAP handler admits only the hosts whose public certificates are in the authorized
folder. A host without an authorized key gets no bus events and can push no event: its handshake
fails before a single message crosses.

``observatory keys`` makes the certificates (pyzmq's format: ``NAME.key`` public, ``NAME.key_secret``
secret, readable by its owner only).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from clients.curve import ClientKeys, CurveKeyError, load_certificate
from core.config import Settings
from core.errors import BootError

log = logging.getLogger("observatory.curve")

DENIAL_LOG_EVERY = 60.0  # seconds between two log lines about the same refused key
MAX_REMEMBERED_DENIALS = 1000


@dataclass(frozen=True, slots=True)
class BusKeys:
    public: bytes
    secret: bytes
    server_public: bytes  # the ingest's: this host's own when it runs the ingest
    authorized_dir: str  # ingest: whose certificates may connect ("" : only this host's own)

    def client(self) -> ClientKeys:
        return ClientKeys(self.public, self.secret, self.server_public)


def bus_keys(settings: Settings) -> BusKeys | None:
    """The keys the settings name, read now; None when CURVE is off."""
    if not settings.curve_secret_key_file:
        return None
    try:
        public, secret = load_certificate(settings.curve_secret_key_file, need_secret=True)
        server_public = public
        if settings.curve_server_key_file:
            server_public, _ = load_certificate(settings.curve_server_key_file, need_secret=False)
    except CurveKeyError as exc:
        raise BootError(str(exc)) from None
    assert secret is not None
    return BusKeys(public, secret, server_public, settings.curve_authorized_dir)


def serve_securely(sock: zmq.Socket[bytes], keys: BusKeys) -> None:
    """Set before ``bind``: this socket is a CURVE server with the ingest's certificate."""
    sock.curve_server = True
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public


class AuthorizedKeys:
    """The ZAP decision: a client key is admitted if its certificate is in the authorized folder
    (read at start) or is this host's own."""

    def __init__(self, keys: BusKeys) -> None:
        # Certificates hold Z85 text, which is also what the ZAP handler hands the callback.
        self.allowed: set[bytes] = {keys.public}
        if keys.authorized_dir:
            folder = Path(keys.authorized_dir)
            if not folder.is_dir():
                raise BootError(f"curve_authorized_dir {folder} is not a folder")
            for path in sorted(folder.glob("*.key")):
                try:
                    public, _ = load_certificate(str(path), need_secret=False)
                except CurveKeyError as exc:
                    raise BootError(str(exc)) from None
                self.allowed.add(public)
        self._denied_at: dict[bytes, float] = {}

    def callback(self, domain: str, z85_key: bytes) -> bool:
        if z85_key in self.allowed:
            return True
        now = time.monotonic()
        # A refused host retries its handshake every fraction of a second: say so once a minute.
        if now - self._denied_at.get(z85_key, -DENIAL_LOG_EVERY) >= DENIAL_LOG_EVERY:
            if len(self._denied_at) >= MAX_REMEMBERED_DENIALS:
                self._denied_at.clear()
            self._denied_at[z85_key] = now
            log.warning("refused a bus connection with an unknown CURVE key %s", z85_key.decode())
        return False


def start_gatekeeper(context: zmq.Context[zmq.Socket[bytes]], keys: BusKeys) -> ThreadAuthenticator:
    """Start the ZAP handler (pyzmq's, in a thread of this process) before any socket binds: a
    CURVE handshake that finds no handler would be admitted without a check."""
    authorized = AuthorizedKeys(keys)
    gatekeeper = ThreadAuthenticator(context, log=logging.getLogger("observatory.curve.zap"))
    gatekeeper.start()
    gatekeeper.configure_curve_callback("*", credentials_provider=authorized)
    log.info("bus secured with CURVE: %d key(s) authorized", len(authorized.allowed))
    return gatekeeper


def keys_main(argv: Sequence[str]) -> int:
    """``observatory keys``: make CURVE certificates for the hosts of a bus."""
    parser = argparse.ArgumentParser(
        prog="observatory keys",
        description="Make CURVE certificates: DIR/NAME.key (public: copy it to the ingest's "
        "curve_authorized_dir, and the ingest's to every host) and DIR/NAME.key_secret (secret: "
        "for that host only, readable by its owner only).",
    )
    parser.add_argument("--dir", required=True, help="folder to write the certificates in")
    parser.add_argument("--force", action="store_true", help="replace certificates that exist")
    parser.add_argument("names", nargs="+", metavar="NAME", help="one certificate per name (a host)")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    for name in args.names:
        if not name or "/" in name or name.startswith("."):
            print(f"observatory keys: error: {name!r} is not a file name", file=sys.stderr)
            return 2
    existing = [
        n for n in args.names if (folder / f"{n}.key_secret").exists() or (folder / f"{n}.key").exists()
    ]
    if existing and not args.force:
        names = ", ".join(existing)
        print(
            f"observatory keys: error: in {folder}, certificates exist for: {names} (--force replaces them)",
            file=sys.stderr,
        )
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        for name in args.names:
            public, secret = zmq.auth.create_certificates(str(folder), name)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
            print(f"{public}\n{secret}")
    finally:
        os.umask(old_umask)
    return 0
