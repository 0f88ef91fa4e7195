"""Following one transcript file by offsets: whole lines once, across truncation, replacement and rewrites."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from workers import tail
from workers.tail import HEAD_BYTES, Position, TranscriptFile

MAX_LINE = 1000


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def follow(path: Path, data: bytes = b"") -> TranscriptFile:
    path.write_bytes(data)
    return TranscriptFile(str(path))


def read_all(file: TranscriptFile, max_line: int = MAX_LINE) -> list[bytes]:
    """Read until the file has nothing more for now."""
    lines: list[bytes] = []
    for _ in range(1000):
        chunk = file.read(max_line)
        lines += chunk.lines
        if not chunk.more:
            return lines
    raise AssertionError("the file never ran out")


# --- whole lines, once -------------------------------------------------------------------------


def test_complete_lines_are_handed_out_once(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": 2}\n')
    chunk = file.read(MAX_LINE)
    assert (chunk.lines, chunk.oversized, chunk.restarted, chunk.more) == (
        [b'{"n": 1}', b'{"n": 2}'],
        0,
        None,
        False,
    )
    assert file.position is not None
    assert file.position.offset == 18
    assert file.read(MAX_LINE).lines == []
    append(path, b'{"n": 3}\n')
    assert file.read(MAX_LINE).lines == [b'{"n": 3}']
    assert file.read(MAX_LINE).lines == []
    assert file.position.offset == 27


def test_a_half_written_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": ')
    assert file.read(MAX_LINE).lines == [b'{"n": 1}']
    assert file.position is not None
    assert file.position.offset == 9
    assert file.read(MAX_LINE).lines == []
    append(path, b"2, ")
    assert file.read(MAX_LINE).lines == []
    append(path, b'"end": true}\n')
    assert file.read(MAX_LINE).lines == [b'{"n": 2, "end": true}']
    assert file.position.offset == path.stat().st_size


def test_a_file_that_is_one_half_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n"')
    chunk = file.read(MAX_LINE)
    assert (chunk.lines, chunk.more, chunk.restarted) == ([], False, None)
    append(path, b": 1}\n")
    assert file.read(MAX_LINE).lines == [b'{"n": 1}']


def test_empty_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'\n{"n": 1}\n\n  \n\t\n{"n": 2}\r\n\n')
    chunk = file.read(MAX_LINE)
    assert chunk.lines == [b'{"n": 1}', b'{"n": 2}\r']
    assert chunk.oversized == 0
    assert file.position is not None
    assert file.position.offset == path.stat().st_size


def test_an_empty_file_reads_nothing(tmp_path: Path) -> None:
    file = follow(tmp_path / "s.jsonl")
    chunk = file.read(MAX_LINE)
    assert (chunk.lines, chunk.oversized, chunk.restarted, chunk.more) == ([], 0, None, False)
    assert file.position == Position(inode=(tmp_path / "s.jsonl").stat().st_ino)


# --- over-long lines ---------------------------------------------------------------------------


def test_a_line_longer_than_max_line_is_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b"a" * 10 + b"\n" + b"b" * 11 + b"\n" + b"c\n")
    chunk = file.read(10)
    assert (chunk.lines, chunk.oversized) == ([b"a" * 10, b"c"], 1)
    assert file.position is not None
    assert (file.position.offset, file.position.skipping) == (25, False)


def test_an_over_long_line_streaming_in_is_dropped_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b"ok\n" + b"x" * 25)
    chunk = file.read(10)
    assert (chunk.lines, chunk.oversized) == ([b"ok"], 1)
    assert file.position is not None
    assert (file.position.offset, file.position.skipping) == (28, True)
    append(path, b"x" * 30)
    chunk = file.read(10)
    assert (chunk.lines, chunk.oversized) == ([], 0)
    assert (file.position.offset, file.position.skipping) == (58, True)
    append(path, b"xxx\nnext\n")
    chunk = file.read(10)
    assert (chunk.lines, chunk.oversized) == ([b"next"], 0)
    assert (file.position.offset, file.position.skipping) == (67, False)


def test_an_unfinished_line_at_max_line_is_kept_waiting(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b"y" * 10)
    chunk = file.read(10)
    assert (chunk.lines, chunk.oversized) == ([], 0)
    assert file.position is not None
    assert (file.position.offset, file.position.skipping) == (0, False)
    append(path, b"\n")
    assert file.read(10).lines == [b"y" * 10]


def test_an_over_long_line_is_never_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail, "READ_CHUNK", 16)
    path = tmp_path / "s.jsonl"
    file = follow(path, b"a\n" + b"x" * 100 + b"\nb\n")
    offsets = []
    lines: list[bytes] = []
    oversized = 0
    while True:
        chunk = file.read(10)
        assert file.position is not None
        offsets.append((file.position.offset, file.position.skipping))
        lines += chunk.lines
        oversized += chunk.oversized
        if not chunk.more:
            break
    assert (lines, oversized) == ([b"a", b"b"], 1)
    assert offsets == [(16, True), (32, True), (48, True), (64, True), (80, True), (96, True), (105, False)]


def test_two_over_long_lines_in_a_row(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b"x" * 20 + b"\n" + b"y" * 20)
    assert file.read(10).oversized == 2
    assert file.position is not None
    assert file.position.skipping is True
    append(path, b"\n" + b"z" * 5 + b"\n")
    chunk = file.read(10)
    assert (chunk.lines, chunk.oversized) == ([b"zzzzz"], 0)


# --- the file changed under us -----------------------------------------------------------------


def test_truncated_file_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": 2}\n')
    file.read(MAX_LINE)
    inode = path.stat().st_ino
    with open(path, "wb") as handle:  # same inode, shorter
        handle.write(b'{"m": 1}\n')
    assert path.stat().st_ino == inode
    chunk = file.read(MAX_LINE)
    assert (chunk.restarted, chunk.lines) == ("truncated", [b'{"m": 1}'])
    assert file.read(MAX_LINE).restarted is None


def test_truncated_to_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n')
    file.read(MAX_LINE)
    path.write_bytes(b"")
    chunk = file.read(MAX_LINE)
    assert (chunk.restarted, chunk.lines) == ("truncated", [])
    append(path, b'{"n": 2}\n')
    chunk = file.read(MAX_LINE)
    assert (chunk.restarted, chunk.lines) == (None, [b'{"n": 2}'])


def test_replaced_file_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n')
    file.read(MAX_LINE)
    replacement = tmp_path / "s.jsonl.tmp"
    replacement.write_bytes(b'{"n": 1}\n{"n": 2}\n{"n": 3}\n')
    os.replace(replacement, path)
    chunk = file.read(MAX_LINE)
    assert (chunk.restarted, chunk.lines) == ("replaced", [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}'])
    assert file.position is not None
    assert file.position.inode == path.stat().st_ino
    assert file.read(MAX_LINE).restarted is None


@pytest.mark.parametrize("grown", [False, True], ids=["same-size", "larger"])
def test_rewritten_in_place_is_read_again_from_the_start(tmp_path: Path, grown: bool) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": 2}\n')
    file.read(MAX_LINE)
    inode = path.stat().st_ino
    with open(path, "r+b") as handle:
        handle.write(b'{"m": 9}\n')
        if grown:
            handle.seek(0, os.SEEK_END)
            handle.write(b'{"n": 3}\n')
    assert path.stat().st_ino == inode
    chunk = file.read(MAX_LINE)
    expected = [b'{"m": 9}', b'{"n": 2}'] + ([b'{"n": 3}'] if grown else [])
    assert (chunk.restarted, chunk.lines) == ("rewritten", expected)
    assert file.read(MAX_LINE).restarted is None


def test_a_change_past_the_head_is_not_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    first = b'{"pad": "' + b"p" * HEAD_BYTES + b'"}\n'
    file = follow(path, first + b'{"n": 1}\n')
    file.read(MAX_LINE)
    with open(path, "r+b") as handle:
        handle.seek(len(first))
        handle.write(b'{"n": 7}\n')
    append(path, b'{"n": 2}\n')
    chunk = file.read(MAX_LINE)
    assert (chunk.restarted, chunk.lines) == (None, [b'{"n": 2}'])


def test_the_head_grows_with_what_was_read(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": ')
    file.read(MAX_LINE)
    assert file.position is not None
    assert file.position.head_length == 9
    append(path, b'2, "pad": "' + b"p" * HEAD_BYTES + b'"}\n')
    file.read(MAX_LINE)
    assert file.position.head_length == HEAD_BYTES
    with open(path, "r+b") as handle:  # a change inside the head but after the first line
        handle.seek(HEAD_BYTES - 1)
        handle.write(b"q")
    assert file.read(MAX_LINE).restarted == "rewritten"


def test_a_missing_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n')
    file.read(MAX_LINE)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        file.read(MAX_LINE)
    with pytest.raises(FileNotFoundError):
        TranscriptFile(str(tmp_path / "never.jsonl")).read(MAX_LINE)
    with pytest.raises(FileNotFoundError):
        TranscriptFile(str(tmp_path / "never.jsonl")).skip_to_end()


# --- more than one read ------------------------------------------------------------------------


def test_more_when_the_file_holds_more_than_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail, "READ_CHUNK", 8)
    path = tmp_path / "s.jsonl"
    file = follow(path, b"aaa\nbbb\nccc\n")
    first = file.read(4)
    assert (first.lines, first.more) == ([b"aaa", b"bbb"], True)
    second = file.read(4)
    assert (second.lines, second.more) == ([b"ccc"], False)


def test_a_read_always_holds_a_whole_line_of_max_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tail, "READ_CHUNK", 8)
    path = tmp_path / "s.jsonl"
    file = follow(path, b"a\n" + b"x" * 20 + b"\n" + b"b\n")
    first = file.read(20)  # one read takes max_line + 1 = 21 bytes
    assert (first.lines, first.oversized, first.more) == ([b"a"], 0, True)
    assert read_all(file, 20) == [b"x" * 20, b"b"]


def test_many_lines_through_small_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail, "READ_CHUNK", 64)
    lines = [orjson.dumps({"n": i, "pad": "p" * (i % 13)}) for i in range(300)]
    path = tmp_path / "s.jsonl"
    file = follow(path, b"\n".join(lines) + b"\n")
    assert read_all(file, 40) == lines


# --- positions ---------------------------------------------------------------------------------


def test_position_round_trip_through_json(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": ')
    file.read(MAX_LINE)
    assert file.position is not None
    saved = orjson.loads(orjson.dumps(file.position.to_json()))
    assert saved == [path.stat().st_ino, 9, file.position.head, 9, False]
    restored = Position.from_json(saved)
    assert restored == file.position
    append(path, b'2}\n{"n": 3}\n')
    again = TranscriptFile(str(path), restored)
    chunk = again.read(MAX_LINE)
    assert (chunk.restarted, chunk.lines) == (None, [b'{"n": 2}', b'{"n": 3}'])


def test_a_skipping_position_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b"x" * 30)
    file.read(10)
    assert file.position is not None
    restored = Position.from_json(orjson.loads(orjson.dumps(file.position.to_json())))
    assert restored is not None
    assert restored.skipping is True
    append(path, b"xx\nok\n")
    assert TranscriptFile(str(path), restored).read(10).lines == [b"ok"]


def test_a_position_of_another_file_is_a_replacement(tmp_path: Path) -> None:
    other = follow(tmp_path / "other.jsonl", b'{"o": 1}\n')
    other.read(MAX_LINE)
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"n": 1}\n')
    chunk = TranscriptFile(str(path), other.position).read(MAX_LINE)
    assert (chunk.restarted, chunk.lines) == ("replaced", [b'{"n": 1}'])


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "position",
        5,
        {"inode": 1},
        [],
        [1, 2, "h", 3],
        [1, 2, "h", 3, False, 0],
        (1, 2, "h", 3, False),
        [-1, 2, "h", 3, False],
        [1, -2, "h", 3, False],
        [1, 2, "h", -3, False],
        [True, 2, "h", 3, False],
        [1, False, "h", 3, False],
        [1, 2, "h", True, False],
        [1.0, 2, "h", 3, False],
        [1, 2.5, "h", 3, False],
        [1, "2", "h", 3, False],
        [1, 2, None, 3, False],
        [1, 2, b"h", 3, False],
        [1, 2, "h", 3, 0],
        [1, 2, "h", 3, None],
        [1, 2, "h", 3, "false"],
    ],
)
def test_position_from_json_rejects_bad_shapes(raw: Any) -> None:
    assert Position.from_json(raw) is None


def test_position_from_json_accepts_zeroes() -> None:
    assert Position.from_json([0, 0, "", 0, False]) == Position()


# --- starting from the end ---------------------------------------------------------------------


def test_skip_to_end_reads_nothing_that_was_there(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": 2}\n')
    file.skip_to_end()
    assert file.position is not None
    assert (file.position.offset, file.position.skipping) == (18, False)
    chunk = file.read(MAX_LINE)
    assert (chunk.lines, chunk.restarted) == ([], None)
    append(path, b'{"n": 3}\n')
    chunk = file.read(MAX_LINE)
    assert (chunk.lines, chunk.restarted) == ([b'{"n": 3}'], None)


def test_skip_to_end_leaves_the_unfinished_last_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": 2}\n{"n": ')
    file.skip_to_end()
    assert file.position is not None
    assert file.position.offset == 18
    assert file.read(MAX_LINE).lines == []
    append(path, b'3}\n{"n": 4}\n')
    assert file.read(MAX_LINE).lines == [b'{"n": 3}', b'{"n": 4}']


@pytest.mark.parametrize("content", [b"", b'{"n": '], ids=["empty", "one-unfinished-line"])
def test_skip_to_end_of_a_file_without_a_whole_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, content)
    file.skip_to_end()
    assert file.position is not None
    assert (file.position.offset, file.position.head_length, file.position.skipping) == (0, 0, False)
    append(path, b"1}\n" if content else b'{"n": 1}\n')
    assert file.read(MAX_LINE).lines == [b'{"n": 1}']


def test_skip_to_end_inside_a_last_line_longer_than_a_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tail, "READ_CHUNK", 8)
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n' + b"x" * 20)
    file.skip_to_end()
    assert file.position is not None
    assert (file.position.offset, file.position.skipping) == (29, True)
    append(path, b"xxx\n" + b'{"n": 2}\n')
    chunk = file.read(MAX_LINE)
    assert (chunk.lines, chunk.oversized, chunk.restarted) == ([b'{"n": 2}'], 0, None)


def test_skip_to_end_then_rewrite_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": 2}\n')
    file.skip_to_end()
    with open(path, "r+b") as handle:
        handle.write(b'{"m": 9}\n')
    chunk = file.read(MAX_LINE)
    assert (chunk.restarted, chunk.lines) == ("rewritten", [b'{"m": 9}', b'{"n": 2}'])


def test_skip_to_end_while_the_writer_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # skip_to_end reads no further than the size it took: a line finished meanwhile must not be cut
    # in two (an unbounded read used to hand out b"}" next).
    path = tmp_path / "s.jsonl"
    file = follow(path, b'{"n": 1}\n{"n": 2')
    real_fstat = os.fstat

    def fstat_then_the_writer_finishes_its_line(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        append(path, b"}\n")
        return result

    monkeypatch.setattr(os, "fstat", fstat_then_the_writer_finishes_its_line)
    file.skip_to_end()
    monkeypatch.undo()
    assert file.read(MAX_LINE).lines == [b'{"n": 2}']
