"""permessage-deflate (RFC 7692): the handshake negotiation, compressing one message, bounded inflating.

The server compresses each broadcast event once and sends the same bytes to every client that agreed
to compression, so it never keeps a compression context between messages: it always answers with
``server_no_context_takeover`` (RFC 7692 7.1.1.1 lets a server add it unasked). Clients may keep
theirs; the ``Inflater`` follows the client's choice.

Nothing here raises on what a client sends: ``negotiate`` returns ``None`` for anything it does not
accept, and ``Inflater.inflate`` returns ``TooBig`` or ``Corrupt`` values that the worker turns into
close codes 1009 and 1007.

Token comparison is exact (case-sensitive) for the extension name and its parameter names. RFC 6455
says which of its tokens are ASCII case-insensitive (``Upgrade: websocket``, ``Connection: Upgrade``)
and says nothing of the kind for extension tokens; RFC 7692 registers the lowercase names, and the
``websockets`` library compares them exactly on both sides. Declining an odd spelling costs that
client its compression; accepting it and answering in lowercase could fail the handshake of a client
that compares exactly, which costs it the connection.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

EXTENSION_NAME = "permessage-deflate"
# Appended by the receiver, stripped by the sender (RFC 7692 7.2.1, 7.2.2): the empty stored block
# that a Z_SYNC_FLUSH ends with.
_TAIL = b"\x00\x00\xff\xff"
# RFC 7692 7.1.2.1: a decimal integer from 8 to 15, without leading zeroes.
_WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}
DEFAULT_WINDOW_BITS = 15
# A final, empty fixed-Huffman block. Fed to a decompressor that sits between blocks, it ends the
# stream and yields nothing; one left inside a block reads it as block data instead.
_PROBE = b"\x03\x00"
# zlib cannot compress raw deflate with an 8-bit window (it refuses wbits=-8, and older versions
# silently used 9: https://github.com/madler/zlib/issues/171), so neither side of a connection
# can honestly compress with 8. We refuse to compress with it, and inflate a client's "8" with 9.
_MIN_ZLIB_WINDOW_BITS = 9

# RFC 7230 3.2.6. Header text arrives as str; anything outside these never makes a valid offer.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_TOKEN_RE = re.compile(_TOKEN)
_PARAM_RE = re.compile(rf"({_TOKEN})(?:[ \t]*=[ \t]*({_TOKEN}|{_QUOTED}))?")
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class DeflateSettings:
    """The server's side of compression, from its configuration."""

    enabled: bool = True
    # Messages shorter than this go out uncompressed (RSV1 clear): below about a kilobyte the deflate
    # overhead and the CPU cost outweigh the bytes saved.
    threshold: int = 1024
    level: int = 3  # zlib level for outgoing messages: 3 keeps most of 9's ratio at a fraction of the CPU


@dataclass(frozen=True, slots=True)
class Deflate:
    """What was agreed with one client."""

    server_window_bits: int  # 9..15: the window we compress with (each message on its own)
    client_window_bits: int  # 8..15: the largest window the client compresses with
    client_no_context_takeover: bool  # the client resets its context per message: a fresh inflater each
    response: str  # the Sec-WebSocket-Extensions value of the 101 response


def _split(text: str, separator: str) -> list[str]:
    """``text`` cut at each ``separator`` outside a quoted-string; an unterminated quote runs to the end."""
    pieces: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def _parse_offer(element: str) -> tuple[str, list[tuple[str, str | None]]] | None:
    """One comma-separated element as (extension name, [(param, value or None)]), or None if malformed.

    Quoted values are unquoted (RFC 7230 3.2.6), so ``"15"`` reads as ``15``.
    """
    name, *raw_params = (piece.strip(_OWS) for piece in _split(element, ";"))
    if _TOKEN_RE.fullmatch(name) is None:
        return None
    params: list[tuple[str, str | None]] = []
    for raw in raw_params:
        match = _PARAM_RE.fullmatch(raw)
        if match is None:
            return None  # also an empty parameter: "permessage-deflate;" or ";;"
        key, value = match.group(1), match.group(2)
        if value is not None and value.startswith('"'):
            value = _QUOTED_PAIR_RE.sub(r"\1", value[1:-1])
        params.append((key, value))
    return name, params


def _accept(params: list[tuple[str, str | None]]) -> Deflate | None:
    """The agreement for one permessage-deflate offer's parameters, or None to decline it (RFC 7692 7.1)."""
    seen: set[str] = set()
    server_bits: int | None = None
    client_bits = DEFAULT_WINDOW_BITS
    client_no_context_takeover = False
    for key, value in params:
        if key in seen:
            return None  # 7.1: an offer with a duplicated parameter is declined
        seen.add(key)
        if key == "server_no_context_takeover":
            if value is not None:
                return None
        elif key == "client_no_context_takeover":
            if value is not None:
                return None
            client_no_context_takeover = True
        elif key == "server_max_window_bits":
            server_bits = _WINDOW_BITS.get(value or "")
            # 8 is a valid value we cannot honour (see _MIN_ZLIB_WINDOW_BITS); answering 9 is not allowed,
            # the answer may only be the same or smaller (7.1.2.1).
            if server_bits is None or server_bits < _MIN_ZLIB_WINDOW_BITS:
                return None
        elif key == "client_max_window_bits":
            if value is not None:
                # 7.1.2.1: with a value, the client will not use a larger window even if our answer
                # names none. Without one, it merely supports our naming one; we name none, so 15.
                bits = _WINDOW_BITS.get(value)
                if bits is None:
                    return None
                client_bits = bits
        else:
            return None  # 7.1: an unknown parameter
    response = [EXTENSION_NAME, "server_no_context_takeover"]
    if server_bits is not None:
        response.append(f"server_max_window_bits={server_bits}")
    # client_max_window_bits is never answered (7.1.2.2 forbids it unless offered, and nothing requires
    # it when offered); client_no_context_takeover is not echoed either: a client that offered it resets
    # its context whether or not we repeat it (7.1.1.2).
    return Deflate(
        server_window_bits=server_bits or DEFAULT_WINDOW_BITS,
        client_window_bits=client_bits,
        client_no_context_takeover=client_no_context_takeover,
        response="; ".join(response),
    )


def negotiate(offer: str | None, settings: DeflateSettings) -> Deflate | None:
    """Accept the first acceptable permessage-deflate offer of a Sec-WebSocket-Extensions value.

    ``offer`` may be several header values joined with ", ". Offers come in the client's order of
    preference (RFC 7692 5); a malformed or unacceptable one is skipped, never the whole header. None:
    the connection goes uncompressed. Never raises on any input.
    """
    if not settings.enabled or not offer:
        return None
    for element in _split(offer, ","):
        if not element.strip(_OWS):
            continue  # RFC 7230 7: empty list elements are allowed and mean nothing
        parsed = _parse_offer(element)
        if parsed is None or parsed[0] != EXTENSION_NAME:
            continue
        agreed = _accept(parsed[1])
        if agreed is not None:
            return agreed
    return None


def compress(payload: bytes, deflate_bits: int, level: int) -> bytes:
    """One message compressed on its own (no context takeover), ready to send with RSV1 set.

    Raw deflate with ``wbits=-deflate_bits``, ended with Z_SYNC_FLUSH, whose trailing 00 00 ff ff is
    removed (RFC 7692 7.2.1). Z_SYNC_FLUSH rather than Z_FINISH: it is the RFC's main procedure and
    what browsers and ``websockets`` send, where a final block (7.2.3.4) is the rarely travelled path
    of every peer's inflater. ``deflate_bits`` must be 9..15 and ``level`` a zlib level; anything else
    is a programming error (zlib's ValueError), so configuration must check them.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -deflate_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    # zlib documents that a sync flush ends with an empty stored block: these very four bytes.
    return data[: -len(_TAIL)]


@dataclass(frozen=True, slots=True)
class Inflated:
    data: bytes


@dataclass(frozen=True, slots=True)
class TooBig:
    """The message inflates past ``limit`` bytes: the caller closes with 1009."""

    limit: int


@dataclass(frozen=True, slots=True)
class Corrupt:
    """Not a valid deflate stream (or the context is lost): the caller closes with 1007."""

    reason: str


class Inflater:
    """Inflates one client's compressed messages, never past ``max_bytes`` each.

    Keeps the zlib context (the client's last window of output) between messages unless the client
    said ``client_no_context_takeover``. With the context kept, a message that fails (``Corrupt`` or
    ``TooBig``, which stops inflating midway) leaves it out of step with the client's: every later
    call then returns ``Corrupt`` and ``usable`` is False. The caller closes the connection on the
    first failure anyway; this only makes sure nothing ever inflates wrongly after one.

    ``inflate`` takes a whole message: the payloads of all its fragments, joined.
    """

    __slots__ = ("_broken", "_decompressor", "_max_bytes", "_takeover", "_wbits")

    def __init__(self, deflate: Deflate, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self._max_bytes = max_bytes
        # Inflating with a larger window than the sender's is always correct; a client's 8 is inflated
        # with 9 because a zlib-based client asked for 8 may well compress with 9.
        self._wbits = -max(deflate.client_window_bits, _MIN_ZLIB_WINDOW_BITS)
        self._takeover = not deflate.client_no_context_takeover
        self._decompressor: zlib._Decompress | None = None
        self._broken: str | None = None

    @property
    def usable(self) -> bool:
        """False once a failed message has lost the shared context: nothing more can be inflated."""
        return self._broken is None

    def inflate(self, compressed: bytes) -> Inflated | TooBig | Corrupt:
        """The message's bytes, or why not; output is bounded by ``max_bytes + 1`` bytes.

        The 00 00 ff ff the sender removed is appended back (RFC 7692 7.2.2) and zlib is told to stop
        one byte past the bound, so a decompression bomb costs what the bound allows and no more (CPython
        assembles its output blocks into one bytes object, so the peak is about twice that, briefly).
        """
        if self._broken is not None:
            return Corrupt(f"an earlier message failed and the compression context is lost: {self._broken}")
        if not compressed:
            # Not deflate data at all (an empty message is the single byte 0x00, RFC 7692 7.2.3.6), but it
            # can only mean an empty message, and the context is untouched: feeding zlib the bare 00 00 ff ff
            # would leave it inside a stored block.
            return Inflated(b"")
        decompressor = self._decompressor
        if decompressor is None or not self._takeover:
            decompressor = zlib.decompressobj(self._wbits)
        result = self._run(decompressor, compressed)
        if self._takeover:
            if isinstance(result, Inflated):
                if decompressor.eof:
                    decompressor = self._after_final_block(result.data)
                self._decompressor = decompressor
            else:
                self._broken = result.reason if isinstance(result, Corrupt) else "message too big"
                self._decompressor = None
        return result

    def _run(self, decompressor: zlib._Decompress, compressed: bytes) -> Inflated | TooBig | Corrupt:
        try:
            data = decompressor.decompress(compressed + _TAIL, self._max_bytes + 1)
        except zlib.error as exc:
            return Corrupt(str(exc))
        # max_length left input unread (unconsumed_tail) or the output passed the bound: there is more.
        if len(data) > self._max_bytes or decompressor.unconsumed_tail:
            return TooBig(self._max_bytes)
        if decompressor.eof:
            # A block with BFINAL set ended the deflate stream (RFC 7692 7.2.3.4). After it may come only
            # what turns the sender's padding into the appended empty block: the 0x00 RFC 7692 asks for,
            # or nothing. Anything else would be dropped silently if we did not refuse it.
            if decompressor.unused_data not in (_TAIL, b"\x00" + _TAIL):
                return Corrupt("data after the final deflate block")
        elif not self._between_blocks(decompressor):
            # A message cut inside a block: zlib read our 00 00 ff ff as block data and now waits for
            # more, so with context takeover the next message would inflate as garbage.
            return Corrupt("message ends inside a deflate block")
        return Inflated(data)

    def _between_blocks(self, decompressor: zlib._Decompress) -> bool:
        """Whether ``decompressor`` waits for a block header, as it must after a whole message."""
        # With context takeover the decompressor lives on, so the probe goes to a copy (its window, at
        # most 32 KiB, copied once per client message); without, it is thrown away after this message.
        probe = decompressor.copy() if self._takeover else decompressor
        try:
            out = probe.decompress(_PROBE, 1)
        except zlib.error:
            return False
        return probe.eof and not out

    def _after_final_block(self, data: bytes) -> zlib._Decompress:
        """A fresh decompressor that continues the window after a BFINAL block ended the stream.

        Only this message's output is known to it, not earlier ones': a later reference further back
        fails as "invalid distance too far back" (Corrupt), it never inflates to wrong bytes.
        """
        window = data[-(1 << -self._wbits) :]
        if window:
            return zlib.decompressobj(self._wbits, zdict=window)
        return zlib.decompressobj(self._wbits)
