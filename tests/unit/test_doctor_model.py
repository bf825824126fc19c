"""doctor's report model without a kernel: exit status, the JSON document, reasons from errors."""

from __future__ import annotations

import errno

import pytest

from bpfgate import doctor
from bpfgate.doctor.model import Check, document, errno_name, exit_code, reason
from bpfgate.errors import AttachError, NotSupported, PermissionDenied


def checks(**status: str) -> list[Check]:
    """Every check OK, except those given (name=status)."""
    return [Check(n, "probe", status.get(n, "ok"), "detail", impact="" if status.get(n, "ok") == "ok" else "x")
            for n in doctor.names()]


def test_exit_status_is_zero_only_when_every_essential_check_is_ok():
    assert exit_code(checks()) == doctor.EXIT_OK == 0
    for name in doctor.ESSENTIAL:
        assert exit_code(checks(**{name: "missing"})) == doctor.EXIT_CORE_MISSING == 1
        assert exit_code(checks(**{name: "warn"})) == 1
    for name in ("kprobes", "fentry", "tracepoints", "tcx", "xdp_native", "tracefs", "jit"):
        assert exit_code(checks(**{name: "missing"})) == 0
    assert exit_code([c for c in checks() if c.name != "tc"]) == 1  # not run is not OK


def test_essential_set_is_the_documented_core():
    assert doctor.ESSENTIAL == {"btf", "maps", "ringbuf", "tc", "xdp_generic", "engine"}
    assert set(doctor.ESSENTIAL) <= set(doctor.names())


def test_document_keys_and_missing_list():
    doc = document(checks(kprobes="missing", fentry="missing", jit="warn"))
    assert list(doc) == ["schema", "bpfgate", "kernel", "core_ok", "exit_code", "missing", "checks"]
    assert doc["schema"] == 1 and doc["core_ok"] is True and doc["exit_code"] == 0
    assert doc["missing"] == [n for n in doctor.names() if n in ("kprobes", "fentry")]
    c = doc["checks"][0]
    assert list(c) == ["name", "kind", "status", "detail", "impact", "fix", "errno", "essential"]


def test_names_are_unique_system_first():
    names = doctor.names()
    assert len(names) == len(set(names))
    assert names[0] == "kernel" and names.index("tracefs") < names.index("tracepoints")


@pytest.mark.parametrize("exc, name", [
    (PermissionDenied("load x", "Operation not permitted"), "EPERM"),
    (AttachError("attach x", errno.EBUSY), "EBUSY"),
    (OSError(errno.ENOENT, "No such file or directory", "/sys/kernel/tracing"), "ENOENT"),
    (NotSupported("TCX", "the kernel rejects TCX links"), None),
    (ValueError("boom"), None),
])
def test_errno_name(exc, name):
    assert errno_name(exc) == name


def test_reason_names_operation_and_cause_without_generic_hints():
    r = reason(PermissionDenied("load fentry/tcp_v4_connect", "Operation not permitted"))
    assert r == "load fentry/tcp_v4_connect: Operation not permitted (EPERM)"
    assert "run as root" not in r  # PermissionDenied's hint is wrong advice when root is refused
    assert reason(OSError(errno.EACCES, "Permission denied", "/x")) == "Permission denied: /x (EACCES)"
    assert reason(KeyError("k")) == "KeyError: 'k'"


def test_unknown_check_is_not_found():
    from bpfgate.errors import NotFound

    with pytest.raises(NotFound):
        doctor.run_check("warp_drive")
    with pytest.raises(NotFound):
        doctor.run_checks(only=["warp_drive"])


def test_reason_is_one_line_for_verifier_errors_and_keeps_build_hints():
    from bpfgate.errors import ObjectError, VerifierError

    v = VerifierError("load x", "0: r0 = 0\n1: exit\nR0 !read_ok", "full log")
    assert reason(v) == "load x: verifier rejected the program: R0 !read_ok"
    o = ObjectError("open BPF object probes.o", "no such file", hint="build the objects with `make -C bpf`")
    assert reason(o) == "open BPF object probes.o: no such file (build the objects with `make -C bpf`)"


def test_a_crashing_check_becomes_a_line_of_the_report(monkeypatch):
    from bpfgate.doctor import probes, system

    def boom(**kw):
        raise RuntimeError("odd host")

    monkeypatch.setitem(system.SYSTEM_CHECKS, "jit", boom)
    c = doctor.run_check("jit")
    assert c.status == "warn" and "odd host" in c.detail
    monkeypatch.setitem(probes.PROBES, "tcx", probes.Probe("tcx", lambda: 1 / 0, "impact"))
    c = doctor.run_check("tcx")
    assert c.status == "missing" and "ZeroDivisionError" in c.detail and c.impact == "impact"


def test_verifier_headline_is_the_error_after_the_last_instruction():
    from bpfgate.errors import VerifierError

    log61 = ("; int BPF_PROG(bg_tcp_retrans_btf, const struct sock *sk)\n0: (79) r7 = *(u64 *)(r1 +16)\n"
             "func 'tcp_retransmit_skb' doesn't have 3-th argument\ninvalid bpf_context access off=16 size=8")
    v = VerifierError("load BPF object trace_tcp.o", log61, log61, prog="bg_tcp_retrans_btf")
    assert v.cause == ("verifier rejected program 'bg_tcp_retrans_btf': func 'tcp_retransmit_skb' doesn't have "
                       "3-th argument; invalid bpf_context access off=16 size=8")


def test_an_engine_the_verifier_rejects_is_missing_and_the_core_not_ready(monkeypatch):
    from bpfgate.doctor import objects
    from bpfgate.errors import VerifierError

    def rejected():
        raise VerifierError("load BPF object engine.o", "2624: (85) call bpf_skb_load_bytes#26\ninvalid access to "
                            "map value, value_size=65575 off=40 size=0", "log", prog="bg_engine_tc")

    monkeypatch.setitem(objects.OBJECT_CHECKS, "engine", objects.ObjectCheck("engine", rejected, "no engine"))
    c = doctor.run_check("engine")
    assert c.status == "missing" and c.kind == "object" and c.essential
    assert "program 'bg_engine_tc'" in c.detail and "invalid access to map value" in c.detail
    others = [Check(n, "probe", "ok", "x") for n in doctor.ESSENTIAL if n != "engine"]
    assert not doctor.core_ok([*others, c]) and doctor.core_ok([*others, Check("engine", "object", "ok", "x")])


def test_a_feature_the_kernel_lacks_keeps_its_errno_and_the_version_that_has_it():
    e = NotSupported("TCX", "the kernel rejects TCX links", min_kernel="6.6", errno=errno.EINVAL)
    assert errno_name(e) == "EINVAL"
    assert reason(e) == "TCX: the kernel rejects TCX links (needs Linux >= 6.6) (EINVAL)"
