"""Server frames built by hand must be what any WebSocket parser reads back."""

from __future__ import annotations

import dataclasses

import pytest
from websockets.extensions import Extension
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from websockets.typing import ExtensionName

from core.frames import text_frame


class _SeesRsv1(Extension):
    """Lets websockets' parser accept RSV1 (as permessage-deflate would) and reports it untouched."""

    name = ExtensionName("x-sees-rsv1")

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        self.rsv1 = frame.rsv1
        return dataclasses.replace(frame, rsv1=False)

    def encode(self, frame: Frame) -> Frame:
        return frame


def parse(raw: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    seen = _SeesRsv1()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=[seen])
    try:
        next(parser)
    except StopIteration as done:
        return dataclasses.replace(done.value, rsv1=seen.rsv1)
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000, 1 << 20])
@pytest.mark.parametrize("compressed", [False, True])
def test_every_length_encoding_parses_back(length: int, compressed: bool) -> None:
    payload = bytes(i % 251 for i in range(length))
    frame = parse(text_frame(payload, compressed))
    assert (frame.opcode, frame.fin, frame.rsv1, frame.rsv2, frame.rsv3) == (
        Opcode.TEXT,
        True,
        compressed,
        False,
        False,
    )
    assert frame.data == payload


def test_the_shortest_header_is_used() -> None:
    assert len(text_frame(b"x" * 125)) == 2 + 125
    assert len(text_frame(b"x" * 126)) == 4 + 126
    assert len(text_frame(b"x" * 65_536)) == 10 + 65_536
