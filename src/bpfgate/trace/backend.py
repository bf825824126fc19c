"""Choosing how each tracepoint is reached, loading a tracing object with that choice, attaching it.

Every hook of trace_tcp/trace_drops exists as a tp_btf program (BTF-typed raw tracepoint: needs the
kernel's BTF) and as a classic tracepoint program (needs tracefs mounted, for the event id). Per hook we
take tp_btf when the kernel's BTF declares the tracepoint, else the classic one when tracefs has it, else
the hook is missing: a required hook makes the tracer fail with NotSupported naming the feature, an
optional one is reported and the tracer runs without it. A tp_btf load that fails anyway (a kernel that
refuses tracing programs) falls back to classic tracepoints: detect by trying, report what was used.
kprobes are not used: tracepoints cover everything here, and this kernel has none (see DESIGN.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bpfgate import attach
from bpfgate.errors import BpfgateError, NotSupported
from bpfgate.kernel.btf import KERNEL_BTF, KIND_TYPEDEF, Btf, kernel_btf
from bpfgate.kernel.objects import BpfObject

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MOUNT_TRACEFS = "mount -t tracefs nodev /sys/kernel/tracing"
BACKENDS = ("auto", "tp_btf", "tracepoint")


@dataclass(frozen=True)
class Extra:
    """A tracepoint argument newer kernels added (the tp_btf argument and the classic struct's field came
    together). The programs read it only where it exists (CO-RE check on `struct`.`field`); where it
    does not, the hook still runs and `lost` is reported."""
    struct: str  # the classic tracepoint's struct in the kernel's BTF, e.g. trace_event_raw_kfree_skb
    field: str
    since: str  # the Linux version that added it
    lost: str  # what the user does not get without it


@dataclass(frozen=True)
class Hook:
    category: str  # tracefs event category ("sock", "tcp", "skb")
    event: str
    btf_prog: str  # SEC("tp_btf/<event>")
    tp_prog: str  # SEC("tracepoint/<category>/<event>")
    gives: str  # what the user loses without it
    required: bool = False
    extras: tuple[Extra, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.category}:{self.event}"


@dataclass
class Choice:
    hook: Hook
    backend: str | None  # "tp_btf", "tracepoint", or None: missing
    note: str = ""  # why it is missing, or why a fallback was taken
    lost: tuple[str, ...] = ()  # what this kernel's version of the tracepoint does not give (Extra)

    def describe(self) -> dict:
        return {"hook": self.hook.name, "backend": self.backend, "gives": self.hook.gives,
                **({"note": self.note} if self.note else {}), **({"lost": list(self.lost)} if self.lost else {})}


def has_tp_btf(event: str) -> bool:
    btf = kernel_btf()
    if btf is None:
        return False
    try:
        btf.find(f"btf_trace_{event}", KIND_TYPEDEF)
        return True
    except BpfgateError:
        return False


def lost_extras(hook: Hook, btf: Btf | None = None) -> tuple[str, ...]:
    """One line per Extra of `hook` the kernel lacks: what is lost, the field, the version that has it."""
    btf = btf or kernel_btf()
    if btf is None:
        return ()
    return tuple(f"{x.lost}: the kernel's {hook.name} has no {x.field} (Linux >= {x.since})"
                 for x in hook.extras if x.field not in btf.members(x.struct))


def tracefs_root() -> str | None:
    """A mounted tracefs (its events/ directory exists only when mounted)."""
    for root in TRACEFS_ROOTS:
        if os.path.isdir(os.path.join(root, "events")):
            return root
    return None


def has_tracepoint(category: str, event: str) -> bool:
    root = tracefs_root()
    return bool(root) and os.path.exists(os.path.join(root, "events", category, event, "id"))


def choose(hooks: tuple[Hook, ...], prefer: str = "auto") -> list[Choice]:
    if prefer not in BACKENDS:
        raise BpfgateError("choose tracing backend", f"must be one of {', '.join(BACKENDS)}, not {prefer!r}")
    out = []
    for h in hooks:
        btf_ok = prefer != "tracepoint" and has_tp_btf(h.event)
        tp_ok = prefer != "tp_btf" and has_tracepoint(h.category, h.event)
        if btf_ok:
            out.append(Choice(h, "tp_btf", lost=lost_extras(h)))
        elif tp_ok:
            out.append(Choice(h, "tracepoint", "" if prefer == "tracepoint" else _why_not_btf(h), lost_extras(h)))
        else:
            out.append(Choice(h, None, _why_missing(h, prefer)))
    return out


def _why_not_btf(h: Hook) -> str:
    if kernel_btf() is None:
        return f"no kernel BTF ({KERNEL_BTF}): classic tracepoint used"
    return f"kernel BTF has no btf_trace_{h.event}: classic tracepoint used"


def _why_missing(h: Hook, prefer: str) -> str:
    parts = []
    if prefer != "tracepoint":
        parts.append("no kernel BTF" if kernel_btf() is None else f"kernel has no tracepoint {h.name}")
    if prefer != "tp_btf":
        parts.append(f"tracefs not mounted ({MOUNT_TRACEFS})" if tracefs_root() is None
                     else f"tracefs has no events/{h.category}/{h.event}")
    return "; ".join(dict.fromkeys(parts))


def _check_required(choices: list[Choice], what: str) -> None:
    for c in choices:
        if c.hook.required and c.backend is None:
            works = [x.hook.gives for x in choices if x.backend]
            raise NotSupported(f"{what}: tracepoint {c.hook.name}", c.note or "not available",
                               hint="still available: " + (", ".join(works) if works else "nothing"))


def _open(obj_name: str, choices: list[Choice], rodata: dict | None, setup) -> BpfObject:
    obj = BpfObject.open(obj_name, rodata=rodata)
    try:
        for c in choices:
            obj.set_autoload(c.hook.btf_prog, c.backend == "tp_btf")
            obj.set_autoload(c.hook.tp_prog, c.backend == "tracepoint")
        if setup:
            setup(obj)
        return obj.load()
    except BaseException:
        obj.close()
        raise


def _open_or_fall_back(obj_name: str, choices: list[Choice], *, what: str, prefer: str, rodata: dict | None,
                       setup) -> tuple[BpfObject, list[Choice]]:
    """Load with `choices`; if that fails and prefer is auto, again with the classic tracepoint for every
    tp_btf hook tracefs has (a kernel whose verifier refuses a tp_btf program). The object and the choices
    it was loaded with."""
    try:
        return _open(obj_name, choices, rodata, setup), choices
    except BpfgateError as e:
        fallback = [Choice(c.hook, "tracepoint", f"tp_btf failed to load ({e.cause}): classic tracepoint used",
                           c.lost)
                    if c.backend == "tp_btf" and has_tracepoint(c.hook.category, c.hook.event) else c
                    for c in choices]
        if prefer != "auto" or fallback == choices or not any(c.backend == "tracepoint" for c in fallback):
            raise
        choices = [c if c.backend != "tp_btf" else Choice(c.hook, None, f"tp_btf failed to load: {e.cause}")
                   for c in fallback]
        _check_required(choices, what)
        return _open(obj_name, choices, rodata, setup), choices


def load_only(obj_name: str, hooks: tuple[Hook, ...]) -> list[Choice]:
    """Load `obj_name` as load() would (its backends, its fallback), attach nothing, close it (`bpfgate
    doctor`): the choices; raises what loading raised (NotSupported for a required hook that is missing)."""
    what = f"load {obj_name}"
    choices = choose(hooks)
    _check_required(choices, what)
    obj, choices = _open_or_fall_back(obj_name, choices, what=what, prefer="auto", rodata=None, setup=None)
    obj.close()
    return choices


def attach_auto(obj: BpfObject, prog: str) -> attach.Attachment:
    """Attach by the program's SEC() through the attach layer (recorded; held by this process)."""
    return attach.tracepoint.attach(obj, prog, attach.Options(owner="trace"))


def load(obj_name: str, hooks: tuple[Hook, ...], *, what: str, prefer: str = "auto",
         rodata: dict | None = None, setup=None) -> tuple[BpfObject, list[attach.Attachment], list[Choice]]:
    """Open, load and attach `obj_name` with one backend per hook. `setup(obj)` runs before load (e.g.
    reuse_map). Returns (object, links, choices); close the links, then the object, to detach."""
    choices = choose(hooks, prefer)
    _check_required(choices, what)
    obj, choices = _open_or_fall_back(obj_name, choices, what=what, prefer=prefer, rodata=rodata, setup=setup)
    links: list[attach.Attachment] = []
    try:
        for c in choices:
            if c.backend is None:
                continue
            prog = c.hook.btf_prog if c.backend == "tp_btf" else c.hook.tp_prog
            try:
                links.append(attach_auto(obj, prog))
            except BpfgateError as e:
                if c.hook.required:
                    raise
                c.note, c.backend = f"attach failed: {e.cause}", None
    except BaseException:
        for link in links:
            link.close()
        obj.close()
        raise
    return obj, links, choices
