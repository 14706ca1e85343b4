"""swarm._core.frame: the fixed frame header and its limits."""

import struct

import pytest

from swarm import ProtocolError
from swarm._core import frame


def test_header_round_trips_every_field():
    data = frame.pack_header(frame.KIND_RESULT, 2**64 - 1, 123456789, 77, [5, 6])
    assert len(data) == frame.HEADER_SIZE + 16
    assert frame.unpack_header(data) == (frame.KIND_RESULT, 2**64 - 1, 123456789, 77, 2)
    assert struct.unpack_from("<2Q", data, frame.HEADER_SIZE) == (5, 6)


def test_header_starts_with_magic_and_version():
    data = frame.pack_header(frame.KIND_TASK, 0, 0, 0)
    magic, version = struct.unpack_from("<IB", data)
    assert magic == frame.MAGIC and version == frame.VERSION
    assert data[:4] == b"SWRM"


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:4] + bytes([99]) + b[5:], "version"),
    (lambda b: b[:5] + bytes([0]) + b[6:], "kind"),
    # Bit 0 is FLAG_FDS (buffers as memfds); the other bits are reserved.
    (lambda b: b[:6] + b"\x02\x00" + b[8:], "flags"),
    (lambda b: b[:8] + struct.pack("<I", frame.MAX_BUFFERS + 1) + b[12:], "buffers"),
])
def test_bad_header_is_a_protocol_error_naming_the_field(mutate, message):
    good = frame.pack_header(frame.KIND_TASK, 1, 0, 10)
    with pytest.raises(ProtocolError, match=message):
        frame.unpack_header(mutate(good))


def test_body_over_the_frame_limit_is_refused():
    data = frame.pack_header(frame.KIND_TASK, 1, 0, 1000)
    assert frame.unpack_header(data, 2000)[3] == 1000
    with pytest.raises(ProtocolError, match="frame limit"):
        frame.unpack_header(data, 500)


def test_short_header_is_refused():
    with pytest.raises(ProtocolError, match="32 bytes"):
        frame.unpack_header(b"SWRM")


def test_kind_names_are_readable():
    assert frame.kind_name(frame.KIND_TASK) == "task"
    assert frame.kind_name(42) == "kind 42"
