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

from bpfgate import families
from bpfgate.errors import BpfgateError
from bpfgate.families import Slot


# in the order they run at one device and direction (tc priority order; TCX: first, then by attach order):
# each family declares its slots where it is registered (bpfgate.families)
SLOTS = families.slots()
_BY_FAMILY = {s.owner: s for s in SLOTS}
DEFAULT = _BY_FAMILY["engine"]


def slot(family: str) -> Slot:
    try:
        return _BY_FAMILY[family]
    except KeyError:
        raise BpfgateError("attach", f"no tc/TCX slot for family {family!r}",
                           hint=f"one of {', '.join(_BY_FAMILY)} (bpfgate.attach.order.SLOTS)") from None


def table() -> list[tuple[str, int, str, str, str]]:
    """(family, priority, handle, tcx place, why) in run order: what docs/attach.md shows."""
    return [(s.owner, s.priority, f"{s.handle:#x}", "first" if s.tcx_first else "appended", s.why) for s in SLOTS]
