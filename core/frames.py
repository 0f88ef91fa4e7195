"""WebSocket frame headers for what the server sends (RFC 6455 5.2): built once per event.

A server's frames are not masked, so a frame is a header and the payload as it is: one broadcast
builds its frame once, and every client it reaches is given the same bytes.
"""

from __future__ import annotations

import struct

_TEXT = 0x1
_FIN = 0x80
_RSV1 = 0x40  # permessage-deflate: this message is compressed (RFC 7692 6)


def text_frame(payload: bytes, compressed: bool = False) -> bytes:
    """One whole text message in one frame, ready to write to the socket."""
    first = _FIN | _TEXT | (_RSV1 if compressed else 0)
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 65_536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload
