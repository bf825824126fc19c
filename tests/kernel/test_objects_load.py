"""Every BPF program bpfgate ships passes this kernel's verifier, loaded the way bpfgate loads it: each engine
hook with its own constants, both event transports, both tracing backends. A program left out (a
tracepoint this kernel lacks) must be named by doctor; a whole object this kernel cannot run must be
refused with the version that can (doctor says the same). Nothing is attached.

In the smoke set: the CI run in Debian 12's 6.1 proves there that every program loads, and a new program
that no load path below covers fails here until it is added."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from bpfgate import doctor, families
from bpfgate.engine.engine import Engine
from bpfgate.errors import NotSupported
from bpfgate.inspect import events
from bpfgate.kernel.objects import OBJECTS_DIR, BpfObject
from bpfgate.policy.model import Hook
from bpfgate.trace import backend, drops, tcp

pytestmark = [pytest.mark.kernel, pytest.mark.smoke]

# objects shipped for something else than a command; why each is not checked here
NOT_HERE = {"probes": "doctor's feature probes: each probe is the load check of its one program (test_doctor)"}
# programs no command loads; where they are loaded instead
BENCH_ONLY = {"engine": {"bg_bench_cg_empty": "bench/bench_cgroup.py's empty cgroup program, its floor",
                         "bg_bench_empty": "bench/bench_classifier.py's empty TC program, its floor",
                         "bg_bench_lpm": "bench/bench_classifier.py's LPM-trie-only baseline"}}
TRACERS = {"trace_tcp": tcp.HOOKS, "trace_drops": drops.HOOKS}
TRACER_MODULES = {"trace_tcp": tcp, "trace_drops": drops}


def _loaded(obj: BpfObject) -> set[str]:
    try:
        return set(obj.loaded_programs())
    finally:
        obj.close()


def _engine() -> Iterator[set[str]]:
    # each hook's programs verified with that hook's constants (cfg_hook), as `apply` loads them; tc-egress
    # loads the program tc-ingress does and only labels its events and captures otherwise: left out, it
    # is the slowest load there is (a minute in an emulated guest). An engine loads only its hook's
    # programs, plus what the caller names: the flow tracker as an ingress engine's attach loads it (XDP's
    # here), the benchmarks' baselines beside the TC program as bench/bench_classifier.py loads them
    also = {Hook.XDP: ("bg_ct_track",), Hook.TC_INGRESS: ("bg_bench_empty", "bg_bench_lpm")}
    for hook in (h for h in Hook if h != Hook.TC_EGRESS):
        yield _loaded(Engine.load(hook, also=also.get(hook, ())).obj)
    with BpfObject.open("engine") as obj:   # as bench/bench_cgroup.py loads it
        for name in obj.program_names():
            obj.set_autoload(name, name == "bg_bench_cg_empty")
        yield set(obj.load().loaded_programs())


def _producer(name: str) -> Callable[[], Iterator[set[str]]]:
    def loads() -> Iterator[set[str]]:
        transports = ("ringbuf", "perf") if events.ringbuf_supported() else ("perf",)
        for transport in transports:   # the perf transport's code is verified only with cfg_perf_events set
            yield _loaded(events.open_producer(name, transport=transport)[0])
    return loads


def _tracer(name: str) -> Callable[[], Iterator[set[str]]]:
    def loads() -> Iterator[set[str]]:
        if hasattr(TRACER_MODULES[name], "require"):   # what the tracer needs beyond its hooks, as doctor asks
            TRACER_MODULES[name].require()
        for prefer in ("tp_btf", "tracepoint"):   # `--backend`: a hook either way, where the kernel has it
            choices = backend.choose(TRACERS[name], prefer)
            if any(c.backend for c in choices):
                yield _loaded(backend._open(name, choices, None, None))
    return loads


def _whole(name: str) -> Iterator[set[str]]:
    yield _loaded(BpfObject.open(name).load())


LOADS = {"engine": _engine, "syn": _producer("syn"), "attempts": _producer("attempts"),
         **{name: _tracer(name) for name in TRACERS}}


def shipped() -> list[str]:
    return sorted(p.stem for p in OBJECTS_DIR.glob("*.o") if p.stem not in NOT_HERE)


@contextmanager
def refused_like_doctor(name: str) -> Iterator[None]:
    """A whole object this kernel cannot run: NotSupported naming the version that can, and doctor says so."""
    try:
        yield
    except NotSupported as e:
        check = doctor.run_check(name) if name in doctor.names() else None
        assert check is None or (check.status == "missing" and e.cause in check.detail), (check, e)
        pytest.skip(f"{name}: {e}")


def test_every_shipped_object_is_checked():
    registered = {o for o, _ in families.objects()}
    assert registered <= set(shipped()), "a family's object was not built (make -C bpf)"
    assert set(shipped()) - registered <= {"selftest", "dropper"}, "an object of no family: register it or say why"


@pytest.mark.parametrize("name", shipped())
def test_every_program_loads(name):
    with BpfObject.open(name) as obj:
        programs = set(obj.program_names())
    loaded: set[str] = set()
    with refused_like_doctor(name):
        for progs in (LOADS.get(name) or (lambda: _whole(name)))():
            loaded |= progs
    bench = set(BENCH_ONLY.get(name, {}))
    left_out = programs - loaded
    if name in TRACERS:
        left_out -= _tracer_programs_excused(name)
    assert not left_out, f"{name}.o: programs no load path loaded: {sorted(left_out)}"
    assert bench <= loaded


def _tracer_programs_excused(name: str) -> set[str]:
    """A tracer's programs this kernel cannot run: a hook it lacks either way, which doctor must name among
    what is lost; or one backend of a hook the other backend serves, which must say why."""
    check = doctor.run_check(name)
    assert check.status in ("ok", "warn"), check
    excused = set()
    for c in backend.choose(TRACERS[name]):
        if c.backend is None:
            assert c.hook.gives in check.impact, (c.hook.name, check.impact)
            excused |= {c.hook.btf_prog, c.hook.tp_prog}
    for prefer, prog in (("tp_btf", "btf_prog"), ("tracepoint", "tp_prog")):
        for c in backend.choose(TRACERS[name], prefer):
            if c.backend is None:
                assert c.note, c.hook.name
                excused.add(getattr(c.hook, prog))
    return excused


def test_the_check_sees_a_program_left_out():
    """The fd test above is what tells a loaded program from one whose autoload was off."""
    with BpfObject.open(os.path.join(OBJECTS_DIR, "selftest.o")) as obj, refused_like_doctor("selftest"):
        obj.set_autoload("bg_empty_xdp", False)
        obj.load()   # 5.10: NotSupported (atomic fetch instructions), a skip
        assert "bg_empty_xdp" not in obj.loaded_programs() and "bg_empty_tc" in obj.loaded_programs()
