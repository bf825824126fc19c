"""Reading a policy file's text: its size and encoding limits (parse.py holds the others). Light to import:
apply's no-change check digests the text without parsing it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import PolicyError

MAX_BYTES = 256 * 2**20           # one policy file (all its documents); see parse.py's input limits


def read_source(path: str | Path) -> tuple[str, str]:
    """(text, name for messages) of a policy file, `-` for stdin, at most MAX_BYTES and UTF-8."""
    import sys

    if str(path) == "-":
        raw = getattr(sys.stdin, "buffer", None)   # a text stream without one (tests): read as text
        data = raw.read(MAX_BYTES + 1) if raw is not None else sys.stdin.read(MAX_BYTES + 1).encode()
        name = "<stdin>"
    else:
        name = Path(path).name or str(path)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise PolicyError(str(path), f"cannot read: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise PolicyError(name, f"larger than {MAX_BYTES // 2**20} MiB, the limit for a policy file")
    try:
        return data.decode("utf-8"), name
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PolicyError(f"{name}:{line}", f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          "a policy file is YAML") from None


def read_again(path: str | Path, text: str) -> Callable[[], str | None]:
    """Reads `path` once more, giving its text when it is still `text` (same length and hash) and None
    otherwise: the line of an error found late without holding a large file's text meanwhile. Stdin cannot
    be read again: its text is held."""
    if str(path) == "-":
        return lambda: text
    size, digest = len(text), hash(text)

    def again() -> str | None:
        try:
            now, _name = read_source(path)
        except PolicyError:
            return None
        return now if len(now) == size and hash(now) == digest else None
    return again
