"""CURVE keys for a ZeroMQ socket that connects to the ingest: this host's certificate, and the
ingest's public key that the connection must meet (anything else is refused by the handshake).

Certificates are the files ``observatory keys`` writes (pyzmq's format): ``NAME.key`` holds the
public key, ``NAME.key_secret`` both keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq
import zmq.auth


class CurveKeyError(ValueError):
    """A certificate file is missing, unreadable or not a certificate."""


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """Keys in Z85 text, as certificates hold them and ZeroMQ's socket options take them."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, secret_key_file: str, server_key_file: str) -> ClientKeys:
        public, secret = load_certificate(secret_key_file, need_secret=True)
        server_public, _ = load_certificate(server_key_file, need_secret=False)
        assert secret is not None
        return cls(public, secret, server_public)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Set before ``connect``: the handshake then encrypts and proves who this side is."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public


def load_certificate(path: str, *, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read the CURVE certificate {path}: {exc}") from None
    if need_secret and secret is None:
        raise CurveKeyError(f"{path} holds no secret key: give the NAME.key_secret file")
    return public, secret
