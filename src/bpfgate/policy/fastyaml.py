"""A fast reader for the plain block YAML that policy files are written in (and `policy export` writes),
with the same result as PyYAML's safe loader on it, and the same line of every key and item.

PyYAML builds a Python object per token, event and node and resolves every scalar through the resolver
list: ~15 s for a 100k-rule file on a small machine. This reads it line by line (~1 s). It covers block
mappings and sequences (indented or not), plain and simply quoted scalars, flow sequences and flat flow
mappings of scalars, and full-line or trailing comments. Anything else (anchors, aliases, tags, block
scalars, multi-line scalars, escapes, nested flow collections, duplicate keys, keys that are not plain
names, a line it cannot place) is declined: `parse` returns None and the caller reads the text with PyYAML,
which also says what is wrong with it. So this module never decides that a file is invalid, and a scalar
means what YAML 1.1 (PyYAML's SafeLoader) says it means: the resolver's own patterns are applied.
"""

from __future__ import annotations

import re

import yaml

Loc = tuple
MAX_DEPTH = 32   # deeper than any policy: declined (the full reader reports it)

_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*):(?: +(.*))?$")
_LINE = re.compile(r"( *)(- +|-$)?(?:" + _KEY.pattern + r"|(.*))")   # indent, dash, key, value, scalar
_RESOLVERS = yaml.SafeLoader.yaml_implicit_resolvers
_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_START_BAD = set("-?:,[]{}#&*!|>'\"%@`")
_constructor = yaml.constructor.SafeConstructor()
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE   # characters PyYAML refuses in a stream: declined


class _Declined(Exception):
    pass


# text that no implicit resolver takes (none of them matches a "/"): CIDRs, most of a large policy's scalars
_SLASHED = re.compile(r"[0-9A-Za-z_.:-]*/[0-9A-Za-z_.:/-]*")


def _resolve(text: str):
    """A plain scalar as SafeLoader reads it (implicit tags: null, bool, int, float, timestamp, else str)."""
    if "/" in text and _SLASHED.fullmatch(text):
        return text
    for tag, regexp in _RESOLVERS.get(text[:1] if text else "", ()):
        if regexp.match(text):
            if tag == _STR_TAG:
                return text
            return _constructor.construct_object(yaml.ScalarNode(tag, text))
    return text


def _plain_scalar(text: str, flow: bool):
    if not text or "\t" in text:
        raise _Declined
    if text[0] in _PLAIN_START_BAD and not (text[0] in "-?:" and len(text) > 1 and text[1] not in " ,[]{}"):
        raise _Declined   # an indicator; `-`, `?` and `:` start a plain scalar when one follows (::/0, -1)
    if ": " in text or text.endswith(":") or " #" in text:
        raise _Declined
    if flow and (":" in text and re.search(r":[,\[\]{}]", text) or any(c in text for c in "[]{}")):
        raise _Declined
    return _resolve(text)


def _quoted(text: str) -> str:
    q = text[0]
    body = text[1:-1]
    if len(text) < 2 or text[-1] != q or q in body or "\\" in body or "\n" in body:
        raise _Declined
    return body


# a plain scalar of these characters holds no indicator, comment or flow syntax (a name, a word, a CIDR: most
# of a large policy's values): only its first and last characters and the resolvers can tell against it
_VERBATIM = re.compile(r"[0-9A-Za-z_.:/-]+")
_RESOLVED_FIRST = frozenset(_RESOLVERS)   # first characters of scalars that an implicit resolver may take


def _scalar(text: str, flow: bool = False):
    text = text.strip(" ")
    if text[:1] in ("'", '"'):
        return _quoted(text)
    if _VERBATIM.fullmatch(text) and text[-1] != ":" and text != "-":   # as _plain_scalar() reads it, faster
        return text if "/" in text or text[0] not in _RESOLVED_FIRST else _resolve(text)
    return _plain_scalar(text, flow)


def _value(text: str):
    """The value after `key: ` or `- ` on one line: a scalar, [a, b] or {k: v}."""
    if text[:1] == "[":
        inner = text[1:-1].strip(" ") if text.endswith("]") else None
        if inner is None or "[" in inner or "{" in inner:
            raise _Declined
        return [] if not inner else [_scalar(x, flow=True) for x in inner.split(",")]
    if text[:1] == "{":
        inner = text[1:-1].strip(" ") if text.endswith("}") else None
        if inner is None or "[" in inner or "{" in inner:
            raise _Declined   # a quoted value holding a comma splits into halves that _quoted() declines
        out = {}
        for pair in inner.split(",") if inner else ():
            m = _KEY.match(pair.strip(" "))
            if not m or m.group(2) is None or m.group(1) in out or _resolve(m.group(1)) != m.group(1):
                raise _Declined
            out[m.group(1)] = _scalar(m.group(2), flow=True)
        return out
    return _scalar(text)


def _strip_comment(text: str) -> str:
    """Cut a trailing ` # comment` (not inside quotes: a line with both is declined)."""
    i = text.find(" #")
    if i < 0:
        return text
    if "'" in text[:i] or '"' in text[:i]:
        raise _Declined
    return text[:i].rstrip(" ")


def _tokens(text: str) -> list[tuple]:
    """(column, kind, key, rest, line) per item: kind "-" (a sequence entry), "k" (key, value or None)
    or "v" (a scalar after a dash)."""
    out: list[tuple] = []
    plain_keys: dict[str, str] = {}
    odd = "\t" in text or "\r" in text   # else no line needs looking at for them
    match = _LINE.match
    for n, line in enumerate(text.split("\n"), 1):
        if "#" in line:
            s = line.lstrip(" ")
            if not s or s[0] == "#":
                continue
            line = _strip_comment(line)
        indent, dash, key, val, rest = match(line).groups()
        if odd and ("\t" in line or "\r" in line) or line.startswith(("---", "...", "%")):
            raise _Declined
        col = len(indent)
        if dash:
            if key is None and not rest:
                raise _Declined   # `-` alone: its item on the next lines
            out.append((col, "-", None, None, n))
            col += len(dash)
        if key is not None:
            seen = plain_keys.get(key)
            if seen is None:
                if _resolve(key) != key:   # `on:`, `yes:`, `1:` are not plain names
                    raise _Declined
                plain_keys[key] = key
            else:
                key = seen   # one str per distinct key: a large policy repeats a few keys 100k times
            out.append((col, "k", key, val, n))
        elif dash:
            out.append((col, "v", None, rest, n))
        elif line.strip(" "):
            raise _Declined   # a scalar continued on another line, or something else
    return out


class _Reader:
    def __init__(self, toks: list[tuple], lines: dict | None):
        self.t, self.i, self.lines = toks, 0, lines

    def _peek(self):
        return self.t[self.i] if self.i < len(self.t) else None

    def node(self, loc: Loc):
        if len(loc) > MAX_DEPTH:
            raise _Declined
        tok = self._peek()
        if tok[1] == "-":
            return self.seq(tok[0], loc)
        if tok[1] == "k":
            return self.map(tok[0], loc)
        raise _Declined

    def map(self, col: int, loc: Loc) -> dict:
        out: dict = {}
        toks, lines = self.t, self.lines
        end = len(toks)
        if lines is not None:
            lines[loc] = toks[self.i][4]
        while True:   # the tokens read inline (no _peek): a large policy has ~3 keys a rule
            if self.i >= end:
                return out
            tok = toks[self.i]
            if tok[0] < col:
                return out
            if tok[0] > col or tok[1] != "k":
                raise _Declined
            _c, _k, key, rest, line = tok
            if key in out:
                raise _Declined   # duplicate key: the full reader says where
            self.i += 1
            if rest is not None:
                val = _value(rest)
                if lines is not None:
                    _mark_flow(lines, loc + (key,), val, line)
            else:
                nxt = toks[self.i] if self.i < end else None
                if nxt is not None and (nxt[0] > col or (nxt[0] == col and nxt[1] == "-")):
                    sub = loc + (key,)
                    val = self.node(sub) if nxt[0] > col else self.seq(col, sub)
                else:
                    val = None   # `key:` and nothing below: null
            out[key] = val
            if lines is not None:
                lines[loc + (key,)] = line   # the key's line, not the value's below it

    def seq(self, col: int, loc: Loc) -> list:
        out: list = []
        toks, lines = self.t, self.lines
        end = len(toks)
        if lines is not None:
            lines[loc] = toks[self.i][4]
        while True:
            if self.i >= end:
                return out
            tok = toks[self.i]
            if tok[0] < col or (tok[0] == col and tok[1] == "k"):
                return out   # dedent, or the next key of the mapping this sequence is indentless in
            if tok[0] > col or tok[1] != "-":
                raise _Declined
            self.i += 1
            item = toks[self.i] if self.i < end else None
            if item is None or item[4] != tok[4]:
                raise _Declined   # a dash alone on its line
            if item[1] == "v":
                self.i += 1
                val = _value(item[3])
                if lines is not None:
                    _mark_flow(lines, loc + (len(out),), val, item[4])
            else:
                val = self.node(loc + (len(out),))
            out.append(val)


def _mark_flow(lines: dict, loc: Loc, val, line: int) -> None:
    """Every part of a one-line value is on that line."""
    lines[loc] = line
    if isinstance(val, dict):
        for k in val:
            lines[loc + (k,)] = line
    elif isinstance(val, list):
        for j in range(len(val)):
            lines[loc + (j,)] = line


def parse(text: str, lines: dict | None = None):
    """The document as plain data (a mapping at the top), or None when this reader declines it. With
    `lines`, fills it as the full reader does: path -> line of every key (and of every item)."""
    try:
        if _NON_PRINTABLE.search(text):
            return None
        toks = _tokens(text)
        if not toks or toks[0][1] != "k":
            return None
        r = _Reader(toks, lines)
        data = r.map(toks[0][0], ())
        if r.i != len(toks) or toks[0][0] != 0:
            return None
        return data
    except (_Declined, RecursionError, yaml.YAMLError, ValueError):
        return None
