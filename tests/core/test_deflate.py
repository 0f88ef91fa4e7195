"""permessage-deflate: negotiation, compress, bounded inflate, and interop with the websockets library."""

from __future__ import annotations

import itertools
import random
import time
import tracemalloc
import zlib
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    enable_client_permessage_deflate,
)
from websockets.frames import Frame, Opcode
from websockets.headers import build_extension, parse_extension

from core.deflate import (
    Corrupt,
    Deflate,
    DeflateSettings,
    Inflated,
    Inflater,
    TooBig,
    compress,
    negotiate,
)

SETTINGS = DeflateSettings()
BASE = "permessage-deflate; server_no_context_takeover"
KIB = 1024
MIB = 1024 * KIB
LIMIT = 4 * MIB


def agreed(
    server_bits: int = 15, client_bits: int = 15, client_nct: bool = False, response: str = BASE
) -> Deflate:
    return Deflate(server_bits, client_bits, client_nct, response)


def deflate_for(client_bits: int = 15, client_nct: bool = False) -> Deflate:
    return agreed(client_bits=client_bits, client_nct=client_nct)


def payload(kind: str, size: int, seed: int = 0) -> bytes:
    rng = random.Random(f"{kind}-{size}-{seed}")
    if kind == "random":
        return rng.randbytes(size)
    if kind == "repetitive":
        unit = b'{"type":"event","sessionId":"abc","projectId":7,"tool":"Bash"},'
        return (unit * (size // len(unit) + 1))[:size]
    raise AssertionError(kind)


# --- negotiate ---------------------------------------------------------------------------------------

ACCEPTED: list[tuple[str, str, Deflate]] = [
    ("chrome", "permessage-deflate; client_max_window_bits", agreed()),
    ("firefox", "permessage-deflate", agreed()),
    ("server-nct-not-echoed-twice", "permessage-deflate; server_no_context_takeover", agreed()),
    ("client-nct", "permessage-deflate; client_no_context_takeover", agreed(client_nct=True)),
    (
        "both-nct",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        agreed(client_nct=True),
    ),
    (
        "server-bits-10",
        "permessage-deflate; server_max_window_bits=10",
        agreed(10, response=f"{BASE}; server_max_window_bits=10"),
    ),
    (
        "server-bits-9",
        "permessage-deflate; server_max_window_bits=9",
        agreed(9, response=f"{BASE}; server_max_window_bits=9"),
    ),
    (
        "server-bits-15",
        "permessage-deflate; server_max_window_bits=15",
        agreed(15, response=f"{BASE}; server_max_window_bits=15"),
    ),
    ("client-bits-12", "permessage-deflate; client_max_window_bits=12", agreed(client_bits=12)),
    ("client-bits-8", "permessage-deflate; client_max_window_bits=8", agreed(client_bits=8)),
    (
        "everything",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=11; client_max_window_bits=13",
        agreed(11, 13, True, f"{BASE}; server_max_window_bits=11"),
    ),
    ("other-extension-first", "x-webkit-deflate-frame, permessage-deflate", agreed()),
    (
        "server-bits-8-then-plain",
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits",
        agreed(),
    ),
    (
        "first-acceptable-wins",
        "permessage-deflate; server_max_window_bits=10, permessage-deflate",
        agreed(10, response=f"{BASE}; server_max_window_bits=10"),
    ),
    ("unknown-param-then-plain", "permessage-deflate; foo, permessage-deflate", agreed()),
    (
        "duplicate-then-plain",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover, permessage-deflate",
        agreed(),
    ),
    ("bad-value-then-good", "permessage-deflate; server_max_window_bits=16, permessage-deflate", agreed()),
    (
        "quoted-server-bits",
        'permessage-deflate; server_max_window_bits="12"',
        agreed(12, response=f"{BASE}; server_max_window_bits=12"),
    ),
    ("quoted-client-bits", 'permessage-deflate; client_max_window_bits="10"', agreed(client_bits=10)),
    (
        "quoted-pair",
        r'permessage-deflate; server_max_window_bits="1\3"',
        agreed(13, response=f"{BASE}; server_max_window_bits=13"),
    ),
    (
        "comma-inside-quotes",
        'x-foo; a="b, permessage-deflate; server_max_window_bits=8", permessage-deflate',
        agreed(),
    ),
    ("no-spaces", "permessage-deflate;client_max_window_bits=9", agreed(client_bits=9)),
    (
        "spaces-everywhere",
        "  permessage-deflate  ;  server_max_window_bits = 10  ;  client_no_context_takeover  ",
        agreed(10, client_nct=True, response=f"{BASE}; server_max_window_bits=10"),
    ),
    ("tabs", "\tpermessage-deflate\t;\tclient_max_window_bits\t", agreed()),
    ("empty-elements", ", ,\t, permessage-deflate ,,", agreed()),
    ("joined-header-values", "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits", agreed()),
    ("uppercase-then-lowercase", "PERMESSAGE-DEFLATE, permessage-deflate", agreed()),
]

DECLINED: list[tuple[str, str | None]] = [
    ("no-header", None),
    ("empty", ""),
    ("blank", "   "),
    ("only-commas", " , ,, "),
    ("other-extension", "x-webkit-deflate-frame"),
    ("other-extensions", "x-webkit-deflate-frame, deflate-frame; max_window_bits=10"),
    ("prefix-of-name", "permessage-deflat"),
    ("name-with-suffix", "permessage-deflate2"),
    ("uppercase-name", "PERMESSAGE-DEFLATE"),
    ("mixed-case-name", "Permessage-Deflate; client_max_window_bits"),
    ("mixed-case-param", "permessage-deflate; Client_Max_Window_Bits"),
    ("unknown-param", "permessage-deflate; foo"),
    ("unknown-param-with-value", "permessage-deflate; mux=1"),
    ("dup-server-nct", "permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
    ("dup-client-nct", "permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
    ("dup-server-bits-same", "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10"),
    ("dup-client-bits", "permessage-deflate; client_max_window_bits; client_max_window_bits=10"),
    ("value-on-server-nct", "permessage-deflate; server_no_context_takeover=1"),
    ("value-on-client-nct", "permessage-deflate; client_no_context_takeover=true"),
    ("quoted-value-on-client-nct", 'permessage-deflate; client_no_context_takeover=""'),
    ("server-bits-no-value", "permessage-deflate; server_max_window_bits"),
    ("server-bits-8", "permessage-deflate; server_max_window_bits=8"),
    ("quoted-server-bits-8", 'permessage-deflate; server_max_window_bits="8"'),
    ("server-bits-7", "permessage-deflate; server_max_window_bits=7"),
    ("server-bits-16", "permessage-deflate; server_max_window_bits=16"),
    ("server-bits-0", "permessage-deflate; server_max_window_bits=0"),
    ("server-bits-huge", "permessage-deflate; server_max_window_bits=99999999999999999999"),
    ("client-bits-7", "permessage-deflate; client_max_window_bits=7"),
    ("client-bits-16", "permessage-deflate; client_max_window_bits=16"),
    ("leading-zero", "permessage-deflate; server_max_window_bits=09"),
    ("leading-zero-15", "permessage-deflate; client_max_window_bits=015"),
    ("plus-sign", "permessage-deflate; server_max_window_bits=+9"),
    ("minus-sign", "permessage-deflate; client_max_window_bits=-9"),
    ("letters", "permessage-deflate; server_max_window_bits=abc"),
    ("decimal", "permessage-deflate; server_max_window_bits=1.5"),
    ("exponent", "permessage-deflate; client_max_window_bits=1e1"),
    ("arabic-indic-digits", "permessage-deflate; server_max_window_bits=\u0661\u0665"),
    ("fullwidth-digits", "permessage-deflate; client_max_window_bits=\uff11\uff15"),
    ("space-inside-quotes", 'permessage-deflate; server_max_window_bits=" 12"'),
    ("empty-quotes", 'permessage-deflate; server_max_window_bits=""'),
    ("unterminated-quote", 'permessage-deflate; server_max_window_bits="12'),
    ("quote-swallows-next-offer", 'permessage-deflate; client_max_window_bits="1, permessage-deflate'),
    ("comma-inside-quotes-only", 'x-foo; a="b, permessage-deflate"'),
    ("empty-value", "permessage-deflate; server_max_window_bits="),
    ("trailing-semicolon", "permessage-deflate;"),
    ("empty-param", "permessage-deflate;; client_max_window_bits"),
    ("no-name", "; client_max_window_bits"),
    ("missing-semicolon", "permessage-deflate client_max_window_bits"),
    ("param-no-name", "permessage-deflate; =10"),
    ("double-equals", "permessage-deflate; server_max_window_bits==10"),
    ("quote-runs-over-next-offer", 'permessage-deflate; x=", permessage-deflate'),
    ("every-offer-bad", "permessage-deflate; server_max_window_bits=8, permessage-deflate; x"),
]


@pytest.mark.parametrize(("header", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_negotiate_accepts(header: str, expected: Deflate) -> None:
    result = negotiate(header, SETTINGS)
    assert result == expected
    # The answer is a well-formed header naming one permessage-deflate.
    ((name, params),) = parse_extension(result.response)
    assert name == "permessage-deflate"
    assert ("server_no_context_takeover", None) in params


@pytest.mark.parametrize("header", [c[1] for c in DECLINED], ids=[c[0] for c in DECLINED])
def test_negotiate_declines(header: str | None) -> None:
    assert negotiate(header, SETTINGS) is None


@pytest.mark.parametrize(
    "header", [None, "permessage-deflate", "permessage-deflate; client_max_window_bits", BASE]
)
def test_disabled_never_agrees(header: str | None) -> None:
    assert negotiate(header, DeflateSettings(enabled=False)) is None


def test_client_max_window_bits_is_answered_only_when_offered() -> None:
    # RFC 7692 7.1.2.2: a response must not name client_max_window_bits unless the offer did; we never do.
    for _, header, _ in ACCEPTED:
        result = negotiate(header, SETTINGS)
        assert result is not None
        assert "client_max_window_bits" not in result.response


def test_websockets_default_offer() -> None:
    """The exact header websockets' client sends by default, and its acceptance of our answer."""
    (factory,) = enable_client_permessage_deflate(None)
    assert isinstance(factory, ClientPerMessageDeflateFactory)
    header = build_extension([(factory.name, list(factory.get_request_params()))])
    # No server_max_window_bits=12 / client_max_window_bits=12: those are its *server* defaults.
    assert header == "permessage-deflate; client_max_window_bits"
    result = negotiate(header, SETTINGS)
    assert result == agreed()
    ((_, params),) = parse_extension(result.response)
    extension = factory.process_response_params(params, [])
    assert extension.remote_no_context_takeover is True  # it will expect a fresh stream per message
    assert extension.local_no_context_takeover is False  # and keep its own context: we must too
    assert extension.local_max_window_bits == result.client_window_bits == 15


HEADER_ALPHABET = st.sampled_from(
    [
        "permessage-deflate",
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
        "x",
        ";",
        ",",
        "=",
        '"',
        "\\",
        " ",
        "\t",
        "8",
        "9",
        "15",
        "0",
        "-",
        "\u0665",
    ]
)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.lists(HEADER_ALPHABET, max_size=30).map("".join)))
def test_negotiate_never_raises(header: str) -> None:
    result = negotiate(header, SETTINGS)
    if result is not None:
        assert 9 <= result.server_window_bits <= 15
        assert 8 <= result.client_window_bits <= 15
        assert result.response.startswith(BASE)
        ((name, _),) = parse_extension(result.response)
        assert name == "permessage-deflate"


# --- compress / inflate: the RFC's own examples -----------------------------------------------------

HELLO = bytes.fromhex("f248cdc9c90700")  # RFC 7692 7.2.3.1


@pytest.mark.parametrize("level", range(1, 10))
def test_compress_hello_as_in_rfc(level: int) -> None:
    assert compress(b"Hello", 15, level) == HELLO


def test_compress_level_0_is_the_rfc_stored_block() -> None:
    assert compress(b"Hello", 15, 0) == bytes.fromhex("000500faff48656c6c6f00")  # RFC 7692 7.2.3.3


def test_compress_empty_is_the_rfc_empty_fragment() -> None:
    assert compress(b"", 15, 3) == b"\x00"  # RFC 7692 7.2.3.6


def test_compress_refuses_window_bits_8() -> None:
    with pytest.raises(ValueError):
        compress(b"x", 8, 3)


@pytest.mark.parametrize(
    ("compressed", "expected"),
    [
        (HELLO, b"Hello"),
        (bytes.fromhex("000500faff48656c6c6f00"), b"Hello"),  # 7.2.3.3 stored block
        (bytes.fromhex("f348cdc9c9070000"), b"Hello"),  # 7.2.3.4 BFINAL plus the 0x00 it asks for
        (bytes.fromhex("f348cdc9c90700"), b"Hello"),  # BFINAL without it
        (bytes.fromhex("f24805000000ffffcac9c90700"), b"Hello"),  # 7.2.3.5 two blocks
        (b"\x00", b""),  # 7.2.3.6 empty
        (b"", b""),  # a zero-length payload: not deflate data, but it can only mean empty
    ],
    ids=["fixed", "stored", "bfinal", "bfinal-no-pad", "two-blocks", "empty-block", "nothing"],
)
@pytest.mark.parametrize("client_nct", [False, True], ids=["takeover", "no-takeover"])
def test_inflate_rfc_examples(compressed: bytes, expected: bytes, client_nct: bool) -> None:
    inflater = Inflater(deflate_for(client_nct=client_nct), LIMIT)
    assert inflater.inflate(compressed) == Inflated(expected)
    assert inflater.inflate(HELLO) == Inflated(b"Hello")  # and the next message still inflates


def test_rfc_shared_window_needs_the_context() -> None:
    """RFC 7692 7.2.3.2: the second "Hello" is one back-reference into the first."""
    second = bytes.fromhex("f200110000")
    kept = Inflater(deflate_for(), LIMIT)
    assert kept.inflate(HELLO) == Inflated(b"Hello")
    assert kept.inflate(second) == Inflated(b"Hello")
    fresh = Inflater(deflate_for(client_nct=True), LIMIT)
    assert fresh.inflate(HELLO) == Inflated(b"Hello")
    assert isinstance(fresh.inflate(second), Corrupt)  # the window is gone, as the client promised


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(9, 16))
@pytest.mark.parametrize("kind", ["random", "repetitive"])
@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 64 * KIB])
def test_round_trip(bits: int, kind: str, size: int) -> None:
    data = payload(kind, size)
    compressed = compress(data, bits, 3)
    if kind == "repetitive" and size >= 1024:
        assert len(compressed) < size // 4
    for client_nct in (False, True):
        assert Inflater(deflate_for(bits, client_nct), LIMIT).inflate(compressed) == Inflated(data)


@pytest.mark.parametrize("level", [-1, *range(10)])
def test_round_trip_every_level(level: int) -> None:
    data = payload("repetitive", 10 * KIB) + payload("random", 3 * KIB)
    assert Inflater(deflate_for(), LIMIT).inflate(compress(data, 15, level)) == Inflated(data)


def test_client_window_8_is_inflated_with_9() -> None:
    """A zlib-based client asked for 8 may compress with 9: references up to 512 bytes back must inflate."""
    first = payload("random", 300)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    messages = [(compressor.compress(m) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4] for m in (first, first)]
    assert len(messages[1]) < 20  # message 2 is one reference 300 bytes back, into message 1
    strict = zlib.decompressobj(-8)  # what an 8-bit window would do: this test can fail
    strict.decompress(messages[0] + b"\x00\x00\xff\xff")
    with pytest.raises(zlib.error):
        strict.decompress(messages[1] + b"\x00\x00\xff\xff")
    inflater = Inflater(deflate_for(client_bits=8), LIMIT)
    assert [inflater.inflate(m) for m in messages] == [Inflated(first), Inflated(first)]


# --- interop with websockets ---------------------------------------------------------------------------

SECRET = random.Random(7).randbytes(60).hex().encode()  # 120 bytes that compress only by reference
MESSAGES = [
    b'{"type":"event","seq":1,"data":"' + SECRET + b'"}',
    b'{"type":"event","seq":2,"data":"' + SECRET + b'"}',
    payload("random", 2000, seed=3),
    b'{"type":"event","seq":3,"sessionId":"s-1","data":"' + b"y" * 5000 + b'"}',
    b"",
    payload("repetitive", 64 * KIB),
    b'{"type":"event","seq":4,"data":"' + SECRET + b'"}',
]


def websockets_client(deflate: Deflate) -> PerMessageDeflate:
    """websockets' own client-side extension for what we agreed."""
    return PerMessageDeflate(
        remote_no_context_takeover=True,  # we always answer server_no_context_takeover
        local_no_context_takeover=deflate.client_no_context_takeover,
        remote_max_window_bits=deflate.server_window_bits,
        local_max_window_bits=max(deflate.client_window_bits, 9),
    )


@pytest.mark.parametrize("bits", range(9, 16))
@pytest.mark.parametrize("kind", ["random", "repetitive"])
@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 64 * KIB])
def test_websockets_decodes_ours(bits: int, kind: str, size: int) -> None:
    data = payload(kind, size)
    theirs = websockets_client(agreed(server_bits=bits))
    frame = theirs.decode(Frame(Opcode.TEXT, compress(data, bits, 3), rsv1=True), max_size=LIMIT)
    assert frame.data == data
    assert frame.rsv1 is False


@pytest.mark.parametrize("bits", range(9, 16))
@pytest.mark.parametrize("client_nct", [False, True], ids=["takeover", "no-takeover"])
def test_ours_inflates_websockets_in_a_row(bits: int, client_nct: bool) -> None:
    deflate = deflate_for(bits, client_nct)
    theirs = websockets_client(deflate)
    ours = Inflater(deflate, LIMIT)
    sizes = []
    for message in MESSAGES:
        frame = theirs.encode(Frame(Opcode.TEXT, message))
        assert frame.rsv1 is True
        sizes.append(len(frame.data))
        assert ours.inflate(bytes(frame.data)) == Inflated(message)
    # With takeover, message 2 is almost all a reference into message 1: the context really was used.
    assert (sizes[1] < sizes[0] // 2) is (not client_nct)


def test_context_takeover_messages_need_the_kept_context() -> None:
    """Inflating a takeover stream as if each message stood alone fails: the test above can fail."""
    theirs = websockets_client(deflate_for())
    frames = [bytes(theirs.encode(Frame(Opcode.TEXT, m)).data) for m in MESSAGES[:2]]
    wrong = Inflater(deflate_for(client_nct=True), LIMIT)
    assert wrong.inflate(frames[0]) == Inflated(MESSAGES[0])
    assert wrong.inflate(frames[1]) != Inflated(MESSAGES[1])


CLIENT_CONFIGS = list(
    itertools.product(
        [False, True],  # server_no_context_takeover
        [False, True],  # client_no_context_takeover
        [None, *range(8, 16)],  # server_max_window_bits
        [None, True, *range(9, 16)],  # client_max_window_bits
    )
)


@pytest.mark.parametrize(
    ("server_nct", "client_nct", "server_bits", "client_bits"),
    CLIENT_CONFIGS,
    ids=["-".join(str(v) for v in c) for c in CLIENT_CONFIGS],
)
def test_every_websockets_client_offer(
    server_nct: bool, client_nct: bool, server_bits: int | None, client_bits: int | Literal[True] | None
) -> None:
    """Every offer websockets' client can make: our answer satisfies it, then messages flow both ways."""
    factory = ClientPerMessageDeflateFactory(server_nct, client_nct, server_bits, client_bits)
    header = build_extension([(factory.name, list(factory.get_request_params()))])
    deflate = negotiate(header, SETTINGS)
    if server_bits == 8:
        assert deflate is None
        return
    assert deflate is not None
    ((_, params),) = parse_extension(deflate.response)
    client = factory.process_response_params(params, [])  # raises NegotiationError on a bad answer
    assert client.remote_no_context_takeover is True
    assert client.remote_max_window_bits == deflate.server_window_bits
    assert client.local_max_window_bits <= max(deflate.client_window_bits, 9)
    inflater = Inflater(deflate, LIMIT)
    for message in MESSAGES:
        sent = client.encode(Frame(Opcode.TEXT, message))
        assert inflater.inflate(bytes(sent.data)) == Inflated(message)
        ours = compress(message, deflate.server_window_bits, SETTINGS.level)
        assert client.decode(Frame(Opcode.TEXT, ours, rsv1=True), max_size=LIMIT).data == message


# --- bounds ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_nct", [False, True], ids=["takeover", "no-takeover"])
def test_bomb_is_refused_without_inflating_it(client_nct: bool) -> None:
    bomb = compress(bytes(10 * MIB), 15, 9)
    assert len(bomb) < 20 * KIB
    inflater = Inflater(deflate_for(client_nct=client_nct), MIB)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = inflater.inflate(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert result == TooBig(MIB)
    # CPython joins its output blocks into one bytes object: twice the bound at the peak, never 10 MiB.
    assert peak < 2 * MIB + 256 * KIB, f"peak {peak} bytes"
    assert elapsed < 1.0


@pytest.mark.parametrize("kind", ["random", "repetitive"])
@pytest.mark.parametrize("size", [1, 1000, 1024, 64 * KIB])
@pytest.mark.parametrize("client_nct", [False, True], ids=["takeover", "no-takeover"])
def test_bound_is_exact(kind: str, size: int, client_nct: bool) -> None:
    data = payload(kind, size)
    compressed = compress(data, 15, 3)
    assert Inflater(deflate_for(client_nct=client_nct), size).inflate(compressed) == Inflated(data)
    assert Inflater(deflate_for(client_nct=client_nct), size - 1).inflate(compressed) == TooBig(size - 1)


def test_bound_zero_passes_only_empty() -> None:
    assert Inflater(deflate_for(), 0).inflate(compress(b"", 15, 3)) == Inflated(b"")
    assert Inflater(deflate_for(), 0).inflate(compress(b"x", 15, 3)) == TooBig(0)


def test_negative_bound_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Inflater(deflate_for(), -1)


# --- corrupt input, and what a failure leaves behind -----------------------------------------------------

CORRUPT = [
    ("block-type-3", b"\x07"),
    ("final-block-type-3", b"\xff\xff\xff"),
    ("stored-lengths-mismatch", b"\x00\x05\x00\x00\x00hello"),
    ("distance-before-start", bytes.fromhex("f200110000")),  # 7.2.3.2's second message, alone
    ("junk-after-final-block", bytes.fromhex("f348cdc9c90700") + HELLO),
    ("text", b"this is not deflate at all, just text"),
    ("cut-inside-huffman-block", HELLO[:4]),
    ("cut-inside-stored-block", bytes.fromhex("000500faff48656c")),
    ("stored-block-header-only", b"\x00\x00"),
    # LEN 16, 3 bytes given: zlib takes our 00 00 ff ff as 4 more and waits, no error of its own.
    ("cut-stored-block-no-zlib-error", bytes.fromhex("001000efff48656c")),
]


@pytest.mark.parametrize("data", [c[1] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
@pytest.mark.parametrize("client_nct", [False, True], ids=["takeover", "no-takeover"])
def test_corrupt(data: bytes, client_nct: bool) -> None:
    result = Inflater(deflate_for(client_nct=client_nct), LIMIT).inflate(data)
    assert isinstance(result, Corrupt)
    assert result.reason


@pytest.mark.parametrize("failing", [b"\x07", compress(bytes(2 * KIB), 15, 3)], ids=["corrupt", "too-big"])
def test_failure_with_takeover_leaves_the_inflater_unusable(failing: bytes) -> None:
    inflater = Inflater(deflate_for(), KIB)
    assert inflater.inflate(HELLO) == Inflated(b"Hello")
    assert inflater.usable
    assert not isinstance(inflater.inflate(failing), Inflated)
    assert not inflater.usable
    after = inflater.inflate(HELLO)
    assert isinstance(after, Corrupt)
    assert "earlier message" in after.reason


@pytest.mark.parametrize("failing", [b"\x07", compress(bytes(2 * KIB), 15, 3)], ids=["corrupt", "too-big"])
def test_failure_without_takeover_leaves_the_next_message_alone(failing: bytes) -> None:
    inflater = Inflater(deflate_for(client_nct=True), KIB)
    assert not isinstance(inflater.inflate(failing), Inflated)
    assert inflater.usable
    assert inflater.inflate(HELLO) == Inflated(b"Hello")


# --- a client that ends its messages with BFINAL while keeping its context (RFC 7692 7.2.3.4) ----------


def deflate_with_dictionary(data: bytes, history: bytes) -> bytes:
    compressor = (
        zlib.compressobj(6, zlib.DEFLATED, -15, zdict=history)
        if history
        else zlib.compressobj(6, zlib.DEFLATED, -15)
    )
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_bfinal_then_reference_into_that_message() -> None:
    inflater = Inflater(deflate_for(), LIMIT)
    first = payload("random", 500)
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert inflater.inflate(final.compress(first) + final.flush(zlib.Z_FINISH)) == Inflated(first)
    second = deflate_with_dictionary(first, first)
    assert len(second) < 50  # one back-reference into the first message
    assert inflater.inflate(second) == Inflated(first)


def test_bfinal_then_reference_past_that_message_is_corrupt_not_wrong() -> None:
    inflater = Inflater(deflate_for(), LIMIT)
    old, recent = payload("random", 600, seed=1), payload("random", 100, seed=2)
    assert inflater.inflate(deflate_with_dictionary(old, b"")) == Inflated(old)
    final = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=old)
    assert inflater.inflate(final.compress(recent) + final.flush(zlib.Z_FINISH)) == Inflated(recent)
    # The client's window holds old + recent; ours after the BFINAL only recent.
    assert isinstance(inflater.inflate(deflate_with_dictionary(old, old + recent)), Corrupt)
