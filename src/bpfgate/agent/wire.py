"""The client's end of the agent's socket, light to import: a JSON line out, a JSON line back, over a unix
stream socket, through the interpreter's own C parts (_json, _socket) instead of the json and socket
modules. Those two import re, enum and selectors: ~8 ms of a `bpfgate rule add` answered by an agent,
whose whole run is ~20 ms. Where the C parts are missing (another Python), the modules are used."""

from __future__ import annotations

try:
    import _json
    import _socket
except ImportError:   # pragma: no cover - CPython has both
    _json = _socket = None

TIMEOUT = TimeoutError   # what a socket's timeout raises (socket.timeout is this since Python 3.10)


def unix_socket():
    """A unix stream socket (connect, sendall, recv, settimeout, close as socket.socket has them)."""
    if _socket is None:
        import socket

        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)


def dumps(obj) -> bytes:
    """obj as one line of JSON (anything JSON has no type for, as its str: addresses as text)."""
    if _json is None:
        import json

        return json.dumps(obj, default=str).encode()
    chunks = _json.make_encoder({}, str, _json.encode_basestring_ascii, None, ": ", ", ", False, False,
                                True)(obj, 0)
    return "".join(chunks).encode()


class _Decoding:
    """What the C scanner reads of a json.JSONDecoder: the defaults."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


_scan = _json.make_scanner(_Decoding()) if _json is not None else None


def loads(data: bytes):
    """The value of one JSON document (ValueError when it is not one, as json.loads says)."""
    text = data.decode()
    if _json is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("not a JSON document") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("extra data after the JSON document")
    return value
