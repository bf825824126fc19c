"""TC message decoding without a kernel: hand-packed RTM_NEWTFILTER bytes, laid out as the kernel sends
them (attribute numbers from include/uapi/linux/{rtnetlink,pkt_cls}.h), decode to TcFilter."""

from __future__ import annotations

import socket
import struct

import pytest

from bpfgate.errors import AttachError, PolicyError
from bpfgate.kernel import tc

RTM_NEWTFILTER = 44
TCA_KIND, TCA_OPTIONS, TCA_CHAIN = 1, 2, 11
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS, TCA_BPF_FLAGS_GEN, TCA_BPF_TAG, TCA_BPF_ID = 6, 7, 8, 9, 10, 11
NLA_F_NESTED = 1 << 15


def nla(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def kernel_filter_reply(*, ifindex=3, handle=7, prio=3, proto=0x0003, parent=0xFFFFFFF2, chain=None,
                        prog_id=131, tag=bytes.fromhex("59f4a931744dcdc6"), name=b"dropper.o:[tc]", flags=1) -> bytes:
    info = (prio << 16) | socket.htons(proto)
    body = struct.pack("=BBHiIII", socket.AF_UNSPEC, 0, 0, ifindex, handle, parent, info)
    body += nla(TCA_KIND, b"bpf\0")
    if chain is not None:
        body += nla(TCA_CHAIN, struct.pack("=I", chain))
    opts = (nla(TCA_BPF_ID, struct.pack("=I", prog_id)) + nla(TCA_BPF_TAG, tag)
            + nla(TCA_BPF_NAME, name + b"\0") + nla(TCA_BPF_FLAGS, struct.pack("=I", flags))
            + nla(TCA_BPF_FLAGS_GEN, struct.pack("=I", 8)))  # TCA_CLS_FLAGS_NOT_IN_HW
    body += nla(TCA_OPTIONS | NLA_F_NESTED, opts)
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWTFILTER, 2, 1, 0) + body


def decode(data: bytes, direction="ingress") -> tc.TcFilter:
    msg = tc.TcMsg(data)
    msg.decode()
    return tc.decode_filter(msg, direction)


def test_decodes_prog_id_tag_name_and_direct_action():
    f = decode(kernel_filter_reply())
    assert (f.ifindex, f.kind, f.handle, f.priority, f.protocol) == (3, "bpf", 7, 3, "all")
    assert f.prog_id == 131
    assert f.tag == "59f4a931744dcdc6"
    assert f.name == "dropper.o:[tc]"
    assert f.direct_action is True
    assert f.chain == 0
    assert f.prog_name == ""  # filled by list_filters from bpf_prog_info, not by netlink


def test_decodes_protocol_chain_and_flags():
    f = decode(kernel_filter_reply(proto=0x86DD, chain=5, flags=0, prio=0xFFFF, handle=0xFFFFFFFF), "egress")
    assert (f.protocol, f.chain, f.direct_action, f.priority, f.handle, f.direction) == (
        "ipv6", 5, False, 0xFFFF, 0xFFFFFFFF, "egress")
    assert decode(kernel_filter_reply(proto=0x88CC)).protocol == "0x88cc"


def test_stock_pyroute2_misses_the_id_our_class_finds():
    # the reason TcMsg exists: if pyroute2 learns TCA_BPF_ID this test tells us to drop the subclass
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    msg = tcmsg(kernel_filter_reply())
    msg.decode()
    assert msg.get_attr("TCA_OPTIONS").get_attr("TCA_BPF_ID") is None
    assert decode(kernel_filter_reply()).prog_id == 131


def test_filter_msg_encodes_what_the_kernel_expects():
    msg = tc.filter_msg(4, "egress", handle=9, priority=2, protocol=tc.ETH_P["ip"], prog_fd=5, name="x")
    msg.encode()
    raw = bytes(msg.data)
    _, _, _, index, handle, parent, info = struct.unpack_from("=BBHiIII", raw, 16)
    assert (index, handle, parent) == (4, 9, 0xFFFFFFF3)
    assert info >> 16 == 2 and socket.ntohs(info & 0xFFFF) == 0x0800
    back = tc.TcMsg(raw)
    back.decode()
    opts = back.get_attr("TCA_OPTIONS")
    assert back.get_attr("TCA_KIND") == "bpf"
    assert (opts.get_attr("TCA_BPF_FD"), opts.get_attr("TCA_BPF_NAME"), opts.get_attr("TCA_BPF_FLAGS")) == (5, "x", 1)


def test_delete_message_has_no_options():
    msg = tc.filter_msg(4, "ingress", handle=1, priority=1, protocol=0)
    assert [a[0] for a in msg["attrs"]] == ["TCA_KIND"]


@pytest.mark.parametrize("proto,number", [("all", 3), ("ip", 0x800), ("ipv6", 0x86DD), ("0x88cc", 0x88CC), (7, 7)])
def test_protocol_number(proto, number):
    assert tc.protocol_number(proto) == number


def test_bad_protocol_and_ids_are_typed_errors():
    with pytest.raises(PolicyError):
        tc.protocol_number("nonsense")
    with pytest.raises(AttachError, match="direction"):
        tc.add_filter("lo", "sideways", 0)
    with pytest.raises(AttachError, match="out of range"):
        tc.add_filter("lo", "ingress", 0, handle=0)
    with pytest.raises(AttachError, match="out of range"):
        tc.delete_filter("lo", "egress", handle=1, priority=0x10000)


def test_netlink_errors_become_typed_errors_naming_the_operation():
    import errno

    from pyroute2.netlink.exceptions import NetlinkError

    from bpfgate.errors import NotFound, NotSupported, PermissionDenied
    from bpfgate.kernel.netlink import translate

    op = "attach tc ingress filter on interface 'veth0'"
    e = translate(op, NetlinkError(errno.EEXIST, "Filter already exists"))
    assert isinstance(e, AttachError) and str(e) == f"{op}: File exists (Filter already exists)"
    # pyroute2 puts strerror in the message slot when the kernel sent none: no "(File exists)" echo
    assert translate(op, NetlinkError(errno.EEXIST, "File exists")).hint == "already exists; use replace"
    assert translate(op, NetlinkError(errno.EINVAL, "Invalid argument"), {errno.EINVAL: "why"}).hint == "why"
    assert isinstance(translate(op, NetlinkError(errno.EPERM)), PermissionDenied)
    assert isinstance(translate(op, NetlinkError(errno.ENODEV)), NotFound)
    assert isinstance(translate(op, NetlinkError(errno.EOPNOTSUPP)), NotSupported)
