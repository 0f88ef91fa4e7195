"""Follow one transcript file: hand out each complete line once, across truncation and restarts.

A writer appends lines while we read, so only lines ended by a newline are handed out: the tail of a
line still being written stays in the file and is read again, whole, once it is finished. The
position (inode, offset, a hash of the file's first bytes) is what the watcher's state file keeps.
A file that shrank, was replaced (another inode) or rewritten (other first bytes) is read again from
the start. A line longer than the limit is dropped as it streams past, never held in memory whole.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

HEAD_BYTES = 256
READ_CHUNK = 1 << 20


@dataclass(slots=True)
class Position:
    inode: int = 0
    offset: int = 0  # just past the last line handed out (or dropped)
    head: str = ""  # hash of the file's first head_length bytes
    head_length: int = 0
    skipping: bool = False  # inside an over-long line: drop bytes up to its newline

    def to_json(self) -> list[Any]:
        return [self.inode, self.offset, self.head, self.head_length, self.skipping]

    @classmethod
    def from_json(cls, raw: Any) -> Position | None:
        if not (isinstance(raw, list) and len(raw) == 5):
            return None
        inode, offset, head, head_length, skipping = raw
        if not (
            all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in (inode, offset, head_length)
            )
            and isinstance(head, str)
            and isinstance(skipping, bool)
        ):
            return None
        return cls(inode, offset, head, head_length, skipping)


@dataclass(slots=True)
class Chunk:
    lines: list[bytes] = field(default_factory=list)
    oversized: int = 0  # lines dropped for their length
    restarted: str | None = None  # why the file is read from its start again, if it is
    more: bool = False  # the file holds more than this read took


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class TranscriptFile:
    def __init__(self, path: str, position: Position | None = None) -> None:
        self.path = path
        self.position = position

    def skip_to_end(self) -> None:
        """Start following from the current end: what is in the file now is never handed out."""
        with open(self.path, "rb") as file:
            stat = os.fstat(file.fileno())
            head = file.read(HEAD_BYTES)
            end = stat.st_size
            # An unfinished last line is left to be read when its writer finishes it. Read no further
            # than the size just taken: a line finished meanwhile must not be cut in two.
            start = max(0, end - READ_CHUNK)
            file.seek(start)
            tail = file.read(end - start)
        cut = tail.rfind(b"\n")
        skipping = False
        if cut >= 0:
            offset = end - len(tail) + cut + 1
        elif len(tail) == end:
            offset = 0  # the whole file is one unfinished line
        else:
            offset, skipping = end, True  # a last line too long to look at: drop what remains of it
        head = head[: min(offset, HEAD_BYTES)]
        self.position = Position(stat.st_ino, offset, _hash(head), len(head), skipping)

    def read(self, max_line: int) -> Chunk:
        """The complete lines written since the last read (raises OSError if the file is gone)."""
        chunk = Chunk()
        with open(self.path, "rb") as file:
            stat = os.fstat(file.fileno())
            position = self.position or Position(stat.st_ino)
            why = self._restart_reason(file, stat, position)
            if why is not None:
                chunk.restarted = why
                position = Position(stat.st_ino)
            self.position = position
            if stat.st_size <= position.offset:
                return chunk
            file.seek(position.offset)
            # Enough to hold a whole line of the longest allowed length, so one always fits.
            want = min(stat.st_size - position.offset, max(READ_CHUNK, max_line + 1))
            data = file.read(want)
            chunk.more = position.offset + len(data) < stat.st_size
            consumed = self._split(data, max_line, chunk)
            if position.head_length < HEAD_BYTES and consumed:
                file.seek(0)
                head = file.read(min(position.offset + consumed, HEAD_BYTES))
                position.head, position.head_length = _hash(head), len(head)
            position.offset += consumed
        return chunk

    def _restart_reason(self, file: Any, stat: os.stat_result, position: Position) -> str | None:
        if stat.st_ino != position.inode:
            return "replaced"
        if stat.st_size < position.offset:
            return "truncated"
        if position.head_length:
            head = file.read(position.head_length)
            if _hash(head) != position.head:
                return "rewritten"
        return None

    def _split(self, data: bytes, max_line: int, chunk: Chunk) -> int:
        """Put the complete lines of ``data`` in ``chunk``; return the bytes consumed."""
        position = self.position
        assert position is not None
        start = 0
        if position.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return len(data)
            position.skipping = False
            start = newline + 1
        end = data.rfind(b"\n")
        if end >= start:
            for line in data[start:end].split(b"\n"):
                if len(line) > max_line:
                    chunk.oversized += 1
                elif line.strip():
                    chunk.lines.append(line)
            start = end + 1
        if len(data) - start > max_line:
            # The unfinished line is already too long: drop it as it goes by.
            chunk.oversized += 1
            position.skipping = True
            return len(data)
        return start
