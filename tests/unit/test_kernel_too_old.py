"""An object a kernel is too old for is refused in one line naming what it lacks and the version that has
it, not with the verifier's log (Debian 11's 5.10 predates atomic fetch instructions and some helpers)."""

from __future__ import annotations

import pytest

from bpfgate.doctor.model import reason
from bpfgate.errors import NotSupported
from bpfgate.kernel import btf
from bpfgate.kernel.objects import _raise_if_too_old

LOG_510_FLOWS = ("1274: (db) r1 = atomic_fetch_or((u64 *)(r8 +48), r1)\nBPF_XADD uses reserved fields\n"
                 "processed 1207 insns (limit 1000000) max_states_per_insn 4 total_states 61")
LOG_510_ENGINE = "2617: (85) call unknown#189\ninvalid func unknown#189\nprocessed 2310 insns"


def test_atomic_fetch_on_an_older_kernel_names_the_instruction_and_the_version():
    with pytest.raises(NotSupported) as e:
        _raise_if_too_old("load BPF object flows.o", LOG_510_FLOWS, "bg_flows_tc")
    assert reason(e.value) == ("load BPF object flows.o: program 'bg_flows_tc' uses BPF atomic instructions that "
                               "fetch the old value (atomic_fetch_add, atomic_fetch_or), which this kernel lacks "
                               "(needs Linux >= 5.12)")


def test_an_unknown_helper_is_named_by_number_in_one_line():
    with pytest.raises(NotSupported) as e:
        _raise_if_too_old("load BPF object engine.o", LOG_510_ENGINE, None)
    assert "calls BPF helper #189, which this kernel lacks" in str(e.value)
    assert "\n" not in reason(e.value)


def test_other_verifier_errors_are_left_to_the_verifier_error():
    _raise_if_too_old("load BPF object engine.o", "12: (bf) r1 = r6\ninvalid access to map value", "bg_engine_tc")


def test_a_helper_the_kernel_lacks_is_refused_with_the_version_that_has_it(monkeypatch):
    monkeypatch.setattr(btf, "kernel_has_helper", lambda name: name != "xdp_load_bytes")
    btf.require_helper("ktime_get_coarse_ns", "syn")
    with pytest.raises(NotSupported) as e:
        btf.require_helper("xdp_load_bytes", "capture by the engine on eth0 at XDP")
    assert str(e.value) == ("capture by the engine on eth0 at XDP: the kernel has no BPF helper bpf_xdp_load_bytes "
                            "(needs Linux >= 5.18)")


def test_every_helper_behind_a_compat_check_has_its_version():
    """bpf/: each BG_HAS_HELPER(name) has its first Linux version in NEWER_HELPERS (for the refusals)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2] / "bpf"
    used = {m for f in root.glob("*.bpf.c") for m in re.findall(r"BG_HAS_HELPER\((\w+)\)", f.read_text())}
    assert used and used <= set(btf.NEWER_HELPERS)
