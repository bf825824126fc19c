"""Names for the numbers the tracing programs report: TCP states, connect-failure causes, and the
kernel's own enums (drop reasons, RST reasons) read from the running kernel's BTF, so a reason added
by a newer kernel shows by name without a bpfgate release."""

from __future__ import annotations

import bisect
import errno
from functools import lru_cache

from bpfgate import contract
from bpfgate.errors import BadInput, BpfgateError

# include/net/tcp_states.h (stable uapi-like numbering)
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
              13: "BOUND_INACTIVE"}

# enum bg_tcp_kind (trace.h) -> the event name users see
TCP_KINDS = contract.constants("trace_tcp").names("bg_tcp_kind", {
    "BG_TCP_CONNECT": "connect", "BG_TCP_ACCEPT": "accept", "BG_TCP_CLOSE": "close",
    "BG_TCP_CONNECT_FAIL": "connect_failed", "BG_TCP_RETRANSMIT": "retransmit", "BG_TCP_RESET_RX": "reset_rx",
    "BG_TCP_RESET_TX": "reset_tx"})

# sk_err of a SYN_SENT socket that closed -> why the connect failed
CAUSES = {errno.ECONNREFUSED: "refused", errno.ETIMEDOUT: "timeout", errno.EHOSTUNREACH: "unreachable",
          errno.ENETUNREACH: "unreachable", 0: "aborted"}

SUBSYS_SHIFT = 16  # skb drop reasons: high 16 bits name a subsystem (include/net/dropreason.h)


def tcp_state(n: int) -> str:
    return TCP_STATES.get(n, str(n))


def connect_cause(err: int) -> str:
    """'refused' / 'timeout' / 'unreachable' / 'aborted' (closed by the application first) / errno name."""
    return CAUSES.get(err) or errno.errorcode.get(err, f"errno {err}")


def _kernel_enum(name: str, prefix: str) -> dict[int, str]:
    from bpfgate.kernel.btf import kernel_btf

    btf = kernel_btf()
    if btf is None:
        return {}
    try:
        values = btf.enum(name)
    except BpfgateError:
        return {}
    return {v & 0xFFFFFFFF: k.removeprefix(prefix) for k, v in values.items()}


@lru_cache(maxsize=1)
def drop_reasons() -> dict[int, str]:
    """enum skb_drop_reason of the running kernel: value -> 'NO_SOCKET', 'TC_INGRESS', ..."""
    return _kernel_enum("skb_drop_reason", "SKB_DROP_REASON_")


@lru_cache(maxsize=1)
def rst_reasons() -> dict[int, str]:
    return _kernel_enum("sk_rst_reason", "SK_RST_REASON_")


def drop_reason(code: int, table: dict[int, str] | None = None) -> str:
    table = drop_reasons() if table is None else table
    if code in table:
        return table[code]
    if code >> SUBSYS_SHIFT:
        return f"SUBSYS_{code >> SUBSYS_SHIFT}:{code & 0xFFFF}"
    return f"REASON_{code}"


def drop_reason_code(name: str, table: dict[int, str] | None = None) -> int:
    """'tc_ingress' / 'SKB_DROP_REASON_TC_INGRESS' / '73' -> 73; BpfgateError for an unknown name."""
    table = drop_reasons() if table is None else table
    if name.isdigit():
        return int(name)
    want = name.upper().removeprefix("SKB_DROP_REASON_")
    for code, n in table.items():
        if n == want:
            return code
    raise BadInput("trace drops --reason", f"unknown drop reason {name!r} (this kernel has: "
                       f"{', '.join(sorted(table.values())[:8])}, ...)")


def rst_reason(code: int) -> str:
    return rst_reasons().get(code, str(code))


class Kallsyms:
    """Kernel address -> 'function+0xoff' from /proc/kallsyms (read once, on first use)."""

    def __init__(self, path: str = "/proc/kallsyms"):
        self._path = path
        self._addrs: list[int] | None = None
        self._names: list[str] = []

    def _load(self) -> None:
        pairs = []
        try:
            with open(self._path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tTwW":
                        addr = int(parts[0], 16)
                        if addr:
                            pairs.append((addr, parts[2]))
        except OSError:
            pass
        pairs.sort()
        self._addrs = [a for a, _ in pairs]
        self._names = [n for _, n in pairs]

    def symbol(self, addr: int) -> str | None:
        if self._addrs is None:
            self._load()
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or not addr:
            return None
        return f"{self._names[i]}+{addr - self._addrs[i]:#x}"
