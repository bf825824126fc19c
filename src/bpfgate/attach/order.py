"""The order in which bpfgate's program families run at a shared hook: the one table (docs/attach.md).

clsact (tc) filters run in ascending priority, so a family's priority is its place; each family has its
own handle as well, so two families never collide at one priority (the kernel keys a filter by both).
TCX (kernel >= 6.6) has no priorities: a link goes first in the chain (BPF_F_BEFORE, no anchor) or last
(appended); families marked `first` go first, the others are appended in the order they attach.
XDP takes one program per device: bpfgate runs no dispatcher, so at most one family holds a device's XDP
(the policy engine at the xdp hook, or the SYN counter); the other one says so and does not attach, and
`syn --block` reaches an engine's XDP through the engine's own rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpfgate.errors import BpfgateError


@dataclass(frozen=True)
class Slot:
    family: str
    priority: int  # clsact filter priority: lower runs first
    handle: int
    tcx_first: bool  # TCX: first in the chain (observers see what a gate later drops), else appended
    why: str


# in the order they run at one device and direction (tc priority order; TCX: first, then by attach order)
SLOTS = (
    Slot("flows", 1, 0xB9F5, True, "flow accounting: counts every packet before anything decides"),
    Slot("capture", 2, 0xB9F6, True, "packet capture: sees every packet before anything decides"),
    Slot("engine-ct", 99, 0xB9E, False, "the engine's egress conntrack tracker: before egress filters"),
    Slot("engine", 100, 0xB9F, False, "the policy engine (also the default slot of attach_tc)"),
    Slot("attempts", 0xB6A7, 0xB6A7, False, "connection attempts: only what the policy let through"),
)
_BY_FAMILY = {s.family: s for s in SLOTS}
DEFAULT = _BY_FAMILY["engine"]


def slot(family: str) -> Slot:
    try:
        return _BY_FAMILY[family]
    except KeyError:
        raise BpfgateError("attach", f"no tc/TCX slot for family {family!r}",
                           hint=f"one of {', '.join(_BY_FAMILY)} (bpfgate.attach.order.SLOTS)") from None


def table() -> list[tuple[str, int, str, str, str]]:
    """(family, priority, handle, tcx place, why) in run order: what docs/attach.md shows."""
    return [(s.family, s.priority, f"{s.handle:#x}", "first" if s.tcx_first else "appended", s.why) for s in SLOTS]
