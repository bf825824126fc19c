"""rtnetlink through pyroute2: sockets in a named netns, interfaces, XDP attach/query, error translation.

TC (clsact qdisc, bpf filters) lives in kernel/tc.py on top of this module.
Every function takes `netns=None` (the caller's namespace) or the name of an iproute2 namespace.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Union

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_SETLINK
from pyroute2.netlink.rtnl.ifinfmsg import (
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_HW_MODE,
    XDP_FLAGS_REPLACE,
    XDP_FLAGS_SKB_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
    ifinfmsg,
)

from bpfgate.errors import AttachError, BpfgateError, NotFound, from_errno
from bpfgate.kernel import netns as _netns

Dev = Union[str, int]  # an interface name, or an ifindex

# hints for errnos whose strerror alone does not tell a user what to do
_HINTS = {
    errno.EEXIST: "already exists; use replace",
    errno.EBUSY: "something is already attached; detach it or use replace",
    errno.ENODEV: "no such interface",
}


def _errno_of(exc: BaseException) -> int:
    code = getattr(exc, "code", None)
    if code is None:
        code = getattr(exc, "errno", None)
    return abs(code) if code else errno.EIO


def translate(op: str, exc: BaseException, hints: dict[int, str] | None = None) -> BpfgateError:
    """NetlinkError/OSError -> typed error naming `op`. The hint is the kernel's extack message when it
    sent one, else the caller's `hints` for that errno, else a generic one."""
    err = _errno_of(exc)
    extack = ""
    if isinstance(exc, NetlinkError) and len(exc.args) > 1 and exc.args[1]:
        extack = str(exc.args[1]).strip()
        if extack == os.strerror(err):  # pyroute2 fills in strerror when the kernel sent no message
            extack = ""
    return from_errno(op, err, hint=extack or (hints or {}).get(err) or _HINTS.get(err))


def on_where(dev: Dev, netns: str | None) -> str:
    """'interface 'veth0'' / 'interface 'veth0' in netns 'ns1'', for operation names."""
    what = f"interface {dev!r}" if isinstance(dev, str) else f"ifindex {dev}"
    return what + (f" in netns {netns!r}" if netns else "")


@contextmanager
def route(netns: str | None = None, op: str | None = None) -> Iterator[IPRoute]:
    """An rtnetlink socket bound to `netns`. The socket keeps its namespace once created, so creating it
    under netns.entered() is enough (no helper process, and a missing namespace is not created).
    `op` names the caller's operation in the error for a missing namespace."""
    try:
        with _netns.entered(netns):
            # no multicast groups (we only ask); ext_ack: the kernel's reason comes back with errors
            ipr = IPRoute(groups=0, ext_ack=True)
    except NotFound as e:
        raise NotFound(op or e.op, f"no such network namespace {netns!r}", hint=e.hint) from None
    except OSError as e:
        raise translate(op or "open an rtnetlink socket", e) from None
    # pyroute2 0.9.7's sync nlm_request() reads this key but never sets it (KeyError): a tuple, please
    ipr.status["nlm_generator"] = False
    try:
        yield ipr
    finally:
        ipr.close()


def resolve(ipr: IPRoute, dev: Dev, op: str) -> int:
    """ifindex of `dev` on this socket's namespace, or NotFound(op, 'no such interface')."""
    try:
        if isinstance(dev, int):
            found = [m["index"] for m in ipr.get_links(dev)]
        else:
            found = ipr.link_lookup(ifname=dev)
    except NetlinkError as e:
        if _errno_of(e) in (errno.ENODEV, errno.ENOENT):
            found = []
        else:
            raise translate(op, e) from None
    if not found:
        raise NotFound(op, "no such interface")
    return found[0]


def ifindex(dev: Dev, netns: str | None = None) -> int:
    """The ifindex of interface `dev` (name or index) in the current namespace or `netns`."""
    op = f"look up {on_where(dev, netns)}"
    with route(netns, op) as ipr:
        return resolve(ipr, dev, op)


# ---------------------------------------------------------------- interfaces


@dataclass(frozen=True)
class Interface:
    name: str
    ifindex: int
    kind: str | None  # IFLA_INFO_KIND: veth, bridge, ...; None for physical NICs and lo
    up: bool
    mtu: int


def _interface_of(msg) -> Interface:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Interface(
        name=msg.get_attr("IFLA_IFNAME"),
        ifindex=msg["index"],
        kind=kind,
        up=bool(msg["flags"] & 1),  # IFF_UP
        mtu=msg.get_attr("IFLA_MTU") or 0,
    )


def interfaces(netns: str | None = None) -> list[Interface]:
    """Every interface in the current namespace or `netns`, by ifindex."""
    op = "list interfaces" + (f" in netns {netns!r}" if netns else "")
    with route(netns, op) as ipr:
        try:
            links = ipr.get_links()
        except (NetlinkError, OSError) as e:
            raise translate(op, e) from None
        return sorted((_interface_of(m) for m in links), key=lambda i: i.ifindex)


def ifname(dev: Dev, netns: str | None = None) -> str:
    """The name of interface `dev` (name or index): what records of attachments are keyed by."""
    if isinstance(dev, str):
        return dev
    for itf in interfaces(netns):
        if itf.ifindex == dev:
            return itf.name
    raise NotFound(f"look up {on_where(dev, netns)}", "no such interface")


ARPHRD_ETHER = 1


def ethernet_mac(dev: Dev, netns: str | None = None) -> tuple[int, bytes | None]:
    """(ifindex, MAC) of `dev`; MAC None when it is not an Ethernet device (no L2 header to address)."""
    op = f"look up {on_where(dev, netns)}"
    with route(netns, op) as ipr:
        index = resolve(ipr, dev, op)
        try:
            msg = ipr.get_links(index)[0]
        except (NetlinkError, OSError, IndexError) as e:
            raise translate(op, e) from None
    mac = msg.get_attr("IFLA_ADDRESS")
    if msg["ifi_type"] != ARPHRD_ETHER or not mac:
        return index, None
    return index, bytes.fromhex(mac.replace(":", ""))


# ---------------------------------------------------------------- XDP

XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE, "offload": XDP_FLAGS_HW_MODE}
# IFLA_XDP_ATTACHED; pyroute2 decodes it to these strings
_ATTACHED = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload", "xdpmulti": "multi",
             1: "native", 2: "generic", 3: "offload", 4: "multi"}


@dataclass(frozen=True)
class XdpState:
    """XDP on one interface. `mode` None: nothing attached; 'multi': several modes at once (ids below)."""

    ifindex: int
    mode: str | None
    prog_id: int  # the single attached program (0 when none, or in multi mode)
    native_id: int = 0
    generic_id: int = 0
    offload_id: int = 0

    @property
    def attached(self) -> bool:
        return self.mode is not None

    def ids(self) -> dict[str, int]:
        """mode -> prog id, for every attached mode."""
        got = {"native": self.native_id, "generic": self.generic_id, "offload": self.offload_id}
        return {m: i for m, i in got.items() if i}


def _xdp_state(index: int, msg) -> XdpState:
    xdp = msg.get_attr("IFLA_XDP")
    if xdp is None:
        return XdpState(index, None, 0)
    mode = _ATTACHED.get(xdp.get_attr("IFLA_XDP_ATTACHED"))
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") or 0
    per_mode = {
        "native": xdp.get_attr("IFLA_XDP_DRV_PROG_ID") or 0,
        "generic": xdp.get_attr("IFLA_XDP_SKB_PROG_ID") or 0,
        "offload": xdp.get_attr("IFLA_XDP_HW_PROG_ID") or 0,
    }
    if mode in per_mode and not per_mode[mode]:
        per_mode[mode] = prog_id  # single mode: the kernel sends only IFLA_XDP_PROG_ID
    return XdpState(index, mode, prog_id if mode != "multi" else 0,
                    per_mode["native"], per_mode["generic"], per_mode["offload"])


def _get_link(ipr: IPRoute, index: int, op: str):
    msg = ifinfmsg()
    msg["index"] = index
    try:
        return ipr.nlm_request(msg, RTM_GETLINK, NLM_F_REQUEST)[0]
    except NetlinkError as e:
        raise translate(op, e) from None


def xdp_query(dev: Dev, netns: str | None = None) -> XdpState:
    """Which XDP program(s) `dev` runs, and in which mode."""
    op = f"query XDP on {on_where(dev, netns)}"
    with route(netns, op) as ipr:
        index = resolve(ipr, dev, op)
        return _xdp_state(index, _get_link(ipr, index, op))


_XDP_HINTS = {errno.EINVAL: "is it an XDP program, and does the device support this mode?"}


def _set_xdp(ipr: IPRoute, index: int, attrs: list, op: str) -> None:
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = [("IFLA_XDP", {"attrs": attrs})]
    try:
        ipr.nlm_request(msg, RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK)
    except NetlinkError as e:
        raise translate(op, e, _XDP_HINTS) from None


def _mode_flags(mode: str, op: str) -> int:
    if mode == "auto":
        return 0  # the kernel picks native when the driver has it, else generic
    if mode not in XDP_MODES:
        raise AttachError(op, f"unknown XDP mode {mode!r}", hint="native, generic, offload or auto")
    return XDP_MODES[mode]


def xdp_attach(dev: Dev, prog_fd: int, *, mode: str = "auto", replace: bool = False,
               expected_prog_fd: int | None = None, netns: str | None = None) -> XdpState:
    """Attach XDP program `prog_fd` to `dev`. By default it fails (EBUSY) when a program is already
    attached (XDP_FLAGS_UPDATE_IF_NOEXIST); `replace=True` swaps it; `expected_prog_fd` swaps only if
    that program is the one attached (XDP_FLAGS_REPLACE). Returns the state after the attach."""
    op = f"attach XDP ({mode}) on {on_where(dev, netns)}"
    flags = _mode_flags(mode, op)
    attrs: list = [("IFLA_XDP_FD", prog_fd)]
    if expected_prog_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_prog_fd))
    elif not replace:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    attrs.append(("IFLA_XDP_FLAGS", flags))
    with route(netns, op) as ipr:
        index = resolve(ipr, dev, op)
        _set_xdp(ipr, index, attrs, op)
        return _xdp_state(index, _get_link(ipr, index, op))


def xdp_detach(dev: Dev, *, mode: str | None = None, netns: str | None = None) -> bool:
    """Detach XDP from `dev`: the given mode, or (None) every attached mode. True if something was."""
    op = f"detach XDP from {on_where(dev, netns)}"
    with route(netns, op) as ipr:
        index = resolve(ipr, dev, op)
        state = _xdp_state(index, _get_link(ipr, index, op))
        modes = [mode] if mode else list(state.ids())
        detached = False
        for m in modes:
            if not state.ids().get(m):
                continue
            _set_xdp(ipr, index, [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", _mode_flags(m, op))], op)
            detached = True
        return detached
