"""Backend choice per tracepoint and the fallback when tp_btf fails to load (no root: detection and
loading are replaced by fakes; the kernel tests exercise the real thing)."""

from __future__ import annotations

import pytest

from bpfgate.errors import BpfgateError, NotSupported
from bpfgate.trace import backend
from bpfgate.trace.drops import HOOKS as DROP_HOOKS
from bpfgate.trace.tcp import HOOKS as TCP_HOOKS


def _kernel(monkeypatch, *, btf=(), tracefs=(), has_btf=True, tracefs_mounted=True):
    monkeypatch.setattr(backend, "has_tp_btf", lambda ev: ev in btf)
    monkeypatch.setattr(backend, "has_tracepoint", lambda cat, ev: ev in tracefs)
    monkeypatch.setattr(backend, "kernel_btf", lambda: _NewestBtf() if has_btf else None)
    monkeypatch.setattr(backend, "tracefs_root", lambda: "/sys/kernel/tracing" if tracefs_mounted else None)


class _NewestBtf:
    """A kernel BTF with every argument the hooks can use."""

    def members(self, struct: str) -> tuple[str, ...]:
        return tuple(x.field for h in (*TCP_HOOKS, *DROP_HOOKS) for x in h.extras if x.struct == struct)


ALL = [h.event for h in TCP_HOOKS]

# Debian 12's 6.1, as its BTF has them: tcp_retransmit_skb and tcp_send_reset share an event class (no
# struct of their own, no err / reason), kfree_skb has no rx_sk.
BTF_61 = """
struct trace_event_raw_tcp_event_sk_skb { const void *skbaddr; const void *skaddr; int state; };
struct trace_event_raw_kfree_skb { void *skbaddr; void *location; unsigned short protocol; int reason; };
struct trace_event_raw_tcp_event_sk_skb a;
struct trace_event_raw_kfree_skb b;
"""


def test_hooks_report_what_an_older_kernel_does_not_give(tmp_path):
    import shutil
    import subprocess

    from bpfgate.kernel.btf import Btf

    if not shutil.which("clang"):
        pytest.skip("clang not installed")
    (tmp_path / "k.c").write_text(BTF_61)
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(tmp_path / "k.c"), "-o", str(tmp_path / "k.o")],
                   check=True)
    old = Btf.from_elf(str(tmp_path / "k.o"))
    assert old.members("trace_event_raw_kfree_skb") == ("skbaddr", "location", "protocol", "reason")
    lost = {h.event: backend.lost_extras(h, old) for h in (*TCP_HOOKS, *DROP_HOOKS)}
    assert lost["inet_sock_set_state"] == () and lost["tcp_receive_reset"] == ()
    assert lost["tcp_retransmit_skb"] == ("failed retransmits (only successful ones are reported): the kernel's "
                                          "tcp:tcp_retransmit_skb has no err (Linux >= 6.17)",)
    assert "Linux >= 6.10" in lost["tcp_send_reset"][0] and "no reason" in lost["tcp_send_reset"][0]
    assert "Linux >= 6.11" in lost["kfree_skb"][0] and "no rx_sk" in lost["kfree_skb"][0]
    assert not any(backend.lost_extras(h, _NewestBtf()) for h in (*TCP_HOOKS, *DROP_HOOKS))


def test_choice_carries_what_is_lost(monkeypatch):
    class Btf61(_NewestBtf):
        def members(self, struct):
            return () if struct == "trace_event_raw_tcp_retransmit_skb" else super().members(struct)

    _kernel(monkeypatch, btf=ALL, tracefs=ALL)
    monkeypatch.setattr(backend, "kernel_btf", lambda: Btf61())
    got = {c.hook.event: c.describe() for c in backend.choose(TCP_HOOKS)}
    assert got["tcp_retransmit_skb"]["backend"] == "tp_btf" and "6.17" in got["tcp_retransmit_skb"]["lost"][0]
    assert "lost" not in got["tcp_send_reset"]


def test_prefers_tp_btf(monkeypatch):
    _kernel(monkeypatch, btf=ALL, tracefs=ALL)
    assert {c.backend for c in backend.choose(TCP_HOOKS)} == {"tp_btf"}
    assert {c.backend for c in backend.choose(TCP_HOOKS, "tracepoint")} == {"tracepoint"}


def test_per_hook_fallback_and_missing(monkeypatch):
    _kernel(monkeypatch, btf=["inet_sock_set_state"], tracefs=["tcp_retransmit_skb"])
    got = {c.hook.event: c for c in backend.choose(TCP_HOOKS)}
    assert got["inet_sock_set_state"].backend == "tp_btf"
    rtx = got["tcp_retransmit_skb"]
    assert rtx.backend == "tracepoint" and "btf_trace_tcp_retransmit_skb" in rtx.note
    assert got["tcp_send_reset"].backend is None and "tcp:tcp_send_reset" in got["tcp_send_reset"].note


def test_missing_required_hook_names_feature_and_what_works(monkeypatch):
    _kernel(monkeypatch, btf=["tcp_retransmit_skb"], has_btf=True, tracefs_mounted=False)
    with pytest.raises(NotSupported) as e:
        backend.load("trace_tcp", TCP_HOOKS, what="trace tcp")
    msg = str(e.value)
    assert "sock:inet_sock_set_state" in msg and "mount -t tracefs" in msg and "retransmits" in msg


def test_no_btf_no_tracefs(monkeypatch):
    _kernel(monkeypatch, has_btf=False, tracefs_mounted=False)
    (c,) = backend.choose(DROP_HOOKS)
    assert c.backend is None and "no kernel BTF" in c.note and "tracefs not mounted" in c.note


def test_bad_backend_name():
    with pytest.raises(BpfgateError):
        backend.choose(TCP_HOOKS, "kprobe")


class _FakeObj:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def test_tp_btf_load_failure_falls_back_to_tracepoints(monkeypatch):
    _kernel(monkeypatch, btf=ALL, tracefs=ALL)
    tried, attached = [], []

    def fake_open(name, choices, rodata, setup):
        tried.append({c.backend for c in choices})
        if "tp_btf" in tried[-1]:
            raise BpfgateError("load BPF object trace_tcp.o", "operation not permitted")
        return _FakeObj()

    monkeypatch.setattr(backend, "_open", fake_open)
    monkeypatch.setattr(backend, "attach_auto", lambda obj, prog: attached.append(prog) or _FakeObj())
    obj, links, choices = backend.load("trace_tcp", TCP_HOOKS, what="trace tcp")
    assert tried == [{"tp_btf"}, {"tracepoint"}]
    assert all(c.backend == "tracepoint" and "tp_btf failed" in c.note for c in choices)
    assert attached == [h.tp_prog for h in TCP_HOOKS]


def test_doctors_load_falls_back_as_the_command_does(monkeypatch):
    """5.10: trace_drops' tp_btf program fails to load, `trace drops` runs on the classic tracepoint;
    doctor's load (load_only) must take the same fallback, not report the tracer missing."""
    _kernel(monkeypatch, btf=[h.event for h in DROP_HOOKS], tracefs=[h.event for h in DROP_HOOKS])
    tried, objs = [], []

    def fake_open(name, choices, rodata, setup):
        tried.append({c.backend for c in choices})
        if "tp_btf" in tried[-1]:
            raise BpfgateError("load BPF object trace_drops.o", "invalid argument")
        objs.append(_FakeObj())
        return objs[-1]

    monkeypatch.setattr(backend, "_open", fake_open)
    choices = backend.load_only("trace_drops", DROP_HOOKS)
    assert tried == [{"tp_btf"}, {"tracepoint"}] and objs[0].closed
    assert all(c.backend == "tracepoint" and "tp_btf failed" in c.note for c in choices)


def test_optional_attach_failure_is_reported_not_fatal(monkeypatch):
    _kernel(monkeypatch, btf=ALL)
    monkeypatch.setattr(backend, "_open", lambda *a: _FakeObj())

    def attach(obj, prog):
        if prog == "bg_tcp_rst_tx_btf":
            raise BpfgateError("attach bg_tcp_rst_tx_btf", "no such file or directory")
        return _FakeObj()

    monkeypatch.setattr(backend, "attach_auto", attach)
    _, links, choices = backend.load("trace_tcp", TCP_HOOKS, what="trace tcp")
    assert len(links) == 3
    (missing,) = [c for c in choices if c.backend is None]
    assert missing.hook.event == "tcp_send_reset" and "attach failed" in missing.note


def test_availability_report(monkeypatch):
    from bpfgate.trace import availability

    _kernel(monkeypatch, btf=ALL + ["kfree_skb"])
    rep = availability()
    assert {b["backend"] for b in rep["trace tcp"]} == {"tp_btf"}
    assert rep["trace drops"][0]["hook"] == "skb:kfree_skb"
