"""Engine state persistence without a kernel: a snapshot plus the journal of live edits, replayed by another
process, gives the same LiveHook (slots, priorities, map contents) as the process that made the edits.
Journals hold rules as plain JSON (the policy file's fields), old pickled journal lines still load, and a
snapshot of another layout fails as one BpfgateError telling to reattach, never as a traceback."""

from __future__ import annotations

import base64
import dataclasses
import enum
import io
import json
import os
import pickle
import random

import pytest
from pydantic import BaseModel

from bpfgate.engine import state as S
from bpfgate.errors import BpfgateError, NotFound, PolicyError
from bpfgate.policy.compile import compile_hook
from bpfgate.policy.live import LiveHook
from bpfgate.policy.model import Hook, HookPolicy, Rule

from policy_gen import random_policy, random_rule

IFINDEX = lambda _n: 1


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "STATE_ROOT", str(tmp_path))
    return S.StateStore("eth0", Hook.TC_INGRESS, "ns1")


def rule(d):
    return Rule.model_validate(d)


# every kind of field, actions included (policy_gen's random rules match but only pass or drop)
RICH = [
    {"name": "a", "src": ["198.18.0.0/24", "10.0.0.0/8"], "protocol": "tcp", "dst_port": [80, "1000-2000"],
     "src_port": "1024-65535", "tcp_flags": "syn,!ack"},
    {"name": "b", "dst": ["fd00::/64", "fdff:ffff::1/128"], "protocol": ["icmpv6"], "icmp_type": 128,
     "icmp_code": 0, "vlan": [1, 4094], "ct": ["new", "invalid"], "action": "drop"},
    {"name": "c", "action": "redirect", "redirect": {"interface": "eth1", "direction": "ingress"}, "mark": 5,
     "rate_limit": {"rate": 10, "unit": "bytes", "per": "source", "burst": 64, "over": "pass"},
     "log": {"rate": 3}, "count": False},
    {"name": "d", "protocol": [47, 200], "tcp_flags": None, "ct": "established", "log": True,
     "rate_limit": {"rate": 1}},
    {"name": "e", "protocol": ["tcp", "udp", "sctp"], "tcp_flags": None, "dst_port": 0},
    {"name": "f", "protocol": "udp", "action": "reject", "reject": {"with": "admin-prohibited", "rate": 5},
     "comment": "closed [x]"},
]


def live_of(hp: HookPolicy) -> LiveHook:
    return LiveHook(compile_hook(hp, Hook.TC_INGRESS, ifindex=IFINDEX), ifindex=IFINDEX)


def same(a: LiveHook, b: LiveHook) -> None:
    assert a.c.cls == b.c.cls
    assert a.c.rules == b.c.rules and a.c.names == b.c.names and a.c.prios == b.c.prios
    assert a.c.source == b.c.source
    assert a.order == b.order and a.quarantine == b.quarantine and a.owners == b.owners


def edit(live: LiveHook, store: S.StateStore, op: str, **kw) -> None:
    """Make an edit the way Engine does: apply it, journal it, release freed slots at once."""
    if op == "add":
        diff = live.add(kw["rule"], kw["position"])
    elif op == "delete":
        diff = live.delete(kw["name"])
    else:
        diff = live.replace(kw["name"], kw["rule"])
    store.journal(op, **kw)
    if diff.rules_free:
        live.release(diff.rules_free)
        store.journal("release", slots=diff.rules_free)


def journal_lines(store: S.StateStore) -> list[dict]:
    with open(store._p("journal.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_snapshot_and_journal_replay(store):
    hp = HookPolicy.model_validate({"default": "deny", "rules": [
        {"name": "a", "protocol": "tcp", "dst_port": [80, "1000-2000"]},
        {"name": "b", "src": "198.18.0.0/24", "action": "drop"}]})
    live = live_of(hp)
    store.save_meta({"prog_id": 1})
    store.snapshot(live, [])
    edits = [("add", {"rule": rule({"name": "c", "protocol": "udp", "src_port": 53}), "position": 0}),
             ("delete", {"name": "a"}),
             ("replace", {"name": "b", "rule": rule({"name": "b", "src": "198.18.1.0/24", "action": "drop"})}),
             ("add", {"rule": rule({"name": "a", "protocol": "tcp", "dst_port": 443}), "position": None})]
    for op, kw in edits:
        edit(live, store, op, **kw)
    again = store.load_live(IFINDEX)
    same(again, live)
    assert [r for r in S.StateStore.listing("ns1")] == [("eth0", Hook.TC_INGRESS)]
    store.remove()
    assert not store.exists()


@pytest.mark.parametrize("seed", range(6))
def test_journal_of_random_edits_is_plain_json_and_replays(store, seed):
    rng = random.Random(seed)
    live = live_of(random_policy(rng, 12))
    store.snapshot(live, [(1.5, [99])])
    journaled: list[Rule] = []
    for i in range(40):
        names = list(live.by_name)
        op = rng.choice(["add", "add", "replace", "delete"]) if names else "add"
        if op == "add":
            r = (rule(rng.choice(RICH)) if rng.random() < 0.3 else random_rule(rng, 0))
            r = r.model_copy(update={"name": f"n{i}"})
            kw = {"rule": r, "position": rng.choice([None, 0, rng.randrange(len(names) + 1)])}
        elif op == "replace":
            name = rng.choice(names)
            kw = {"name": name, "rule": random_rule(rng, 0).model_copy(update={"name": name})}
        else:
            kw = {"name": rng.choice(names)}
        try:
            edit(live, store, op, **kw)
        except PolicyError:   # refused (no shape left ...): nothing journaled; like Engine, re-read the state
            live = store.load_live(IFINDEX)   # (a refusal may leave LiveHook's unused shape specs changed)
            continue
        if "rule" in kw:
            journaled.append(kw["rule"])
    lines = journal_lines(store)
    rules = [rec["rule"] for rec in lines if "rule" in rec]
    assert all(isinstance(d, dict) for d in rules)            # no pickles: the policy file's fields
    assert [Rule.model_validate(d) for d in rules] == journaled
    again = store.load_live(IFINDEX)
    same(again, live)
    assert store.pending_free() == [(1.5, [99])]


def test_every_field_kind_round_trips_through_the_journal(store):
    live = live_of(HookPolicy(default="allow"))
    store.snapshot(live, [])
    rng = random.Random(7)
    originals = [rule(d) for d in RICH] + [random_rule(rng, i).model_copy(update={"name": f"x{i}"})
                                            for i in range(300)]
    for r in originals:
        store.journal("add", rule=r, position=None)
    back = [S._rule(rec["rule"]) for rec in journal_lines(store)]
    assert back == originals
    assert json.loads(json.dumps(journal_lines(store))) == journal_lines(store)


def test_an_old_journal_line_with_a_pickled_rule_still_loads(store):
    hp = HookPolicy.model_validate({"default": "deny", "rules": RICH[:2]})
    live = live_of(hp)
    store.snapshot(live, [])
    old = rule(RICH[2]).model_copy(update={"name": "old"})
    new = rule(RICH[4]).model_copy(update={"name": "new"})
    live.add(old, 0)
    live.add(new, None)
    diff = live.replace("a", rule({"name": "a", "protocol": "udp", "dst_port": 53, "action": "drop"}))
    with open(store._p("journal.jsonl"), "a") as f:   # as bpfgate wrote it before rules were plain JSON
        f.write(json.dumps({"op": "add", "rule": base64.b64encode(pickle.dumps(old)).decode(),
                            "position": 0}) + "\n")
    store.journal("add", rule=new, position=None)     # and a line of this version after it
    with open(store._p("journal.jsonl"), "a") as f:
        rep = rule({"name": "a", "protocol": "udp", "dst_port": 53, "action": "drop"})
        f.write(json.dumps({"op": "replace", "name": "a",
                            "rule": base64.b64encode(pickle.dumps(rep)).decode()}) + "\n")
    again = store.load_live(IFINDEX)
    same(again, live)
    assert store.pending_free() == ([(0.0, list(diff.rules_free))] if diff.rules_free else [])


def test_journal_refuses_a_non_rule(store):
    with pytest.raises(ValueError):
        S._rule(base64.b64encode(pickle.dumps({"name": "x"})).decode())
    with pytest.raises(TypeError):
        S._rule(42)


def reattach_error(store) -> BpfgateError:
    with pytest.raises(BpfgateError) as ei:
        store.load_live(IFINDEX)
    e = ei.value
    assert type(e) is BpfgateError and not isinstance(e, NotFound)   # detach must still clean it up
    assert e.hint == "detach it and apply the policy again"
    assert "eth0 tc-ingress (netns ns1)" in e.op
    return e


def _mk(store, name):
    os.makedirs(store.dir, exist_ok=True)
    return store._p(name)


def _snapshot_blob(live: LiveHook) -> bytes:
    live.ifindex = None
    try:
        return pickle.dumps({"live": live, "pending": []}, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        live.ifindex = IFINDEX


def test_a_snapshot_without_version_is_refused(store):
    store.snapshot(live_of(HookPolicy(default="allow")), [])
    with open(store._p("snapshot.pickle"), "wb") as f:   # as bpfgate wrote it before versioning
        f.write(_snapshot_blob(live_of(HookPolicy.model_validate({"rules": RICH}))))
    assert "no format version" in reattach_error(store).cause


@pytest.mark.parametrize("version", [b"1", b"3", b"6", b"999", b"x", b""])
def test_a_snapshot_of_another_version_is_refused(store, version):
    live = live_of(HookPolicy.model_validate({"rules": RICH}))
    with open(_mk(store, "snapshot.pickle"), "wb") as f:
        f.write(S.SNAPSHOT_MAGIC + version + b"\n" + _snapshot_blob(live))
    e = reattach_error(store)
    assert f"format version {version.decode()}," in e.cause and f"reads version {S.SNAPSHOT_VERSION}" in e.cause


@pytest.mark.parametrize("blob,kind", [
    (b"\x80\x04cbpfgate_gone_module\nLiveHook\n.", "ModuleNotFoundError"),     # a module that went away
    (b"\x80\x04cbpfgate.policy.live\nGoneClass\n.", "AttributeError"),         # a class that went away
    (b"\x80\x04\x95\x10\x00\x00", "UnpicklingError|EOFError"),                 # torn
    (b"not a pickle at all", "UnpicklingError"),
    (pickle.dumps({"live": "not a LiveHook", "pending": []}), None),
])
def test_a_snapshot_that_does_not_unpickle_is_refused(store, blob, kind):
    with open(_mk(store, "snapshot.pickle"), "wb") as f:
        f.write(S.SNAPSHOT_MAGIC + b"%d\n" % S.SNAPSHOT_VERSION + blob)
    e = reattach_error(store)
    if kind:
        assert "does not load" in e.cause and any(k in e.cause for k in kind.split("|"))
    else:
        assert "does not hold an engine state" in e.cause


def test_a_missing_snapshot_or_a_bad_journal_line_is_refused(store):
    store.save_meta({})
    assert "snapshot is missing" in reattach_error(store).cause
    store.snapshot(live_of(HookPolicy(default="allow")), [])
    for bad in ('{"op": "add", "rule": {"name": "x", "bogus": 1}}', '{"op": "add", "rule": "bm90IGEgcGlja2xl"}',
                '{"op": "add", "rule": 5}', '["add"]', '{"op": "add", "rule": {"name": '):
        with open(store._p("journal.jsonl"), "w") as f:
            f.write("\n" + bad + "\n")
        assert "journal line 2 does not load" in reattach_error(store).cause


# ---- the snapshot's layout: a change must bump SNAPSHOT_VERSION ---------------------------------------
LAYOUT = {
    "bpfgate.policy.compile.CompiledHook": ("hook", "gen", "default_rule", "shapes", "cls", "rules", "names",
                                            "prios", "rule_keys", "source", "classes", "contested", "order",
                                            "by_name", "low_free", "sets", "_conf"),
    "bpfgate.policy.compile.Limits": ("max_shapes", "max_entries", "max_rule_entries", "cheap_merge", "classes"),
    "bpfgate.policy.compile.ShapeSpec": ("id", "mask"),
    "bpfgate.policy.layout.ClsValue": ("prio", "rule_id"),
    "bpfgate.policy.layout.Conf": ("gen", "default_rule", "shapes", "trees", "tree_protos"),
    "bpfgate.policy.layout.RuleAction": ("action", "over_action", "flags", "redirect_ifindex", "mark", "log_rate",
                                         "rate", "burst", "reject_with", "reject_rate"),
    "bpfgate.policy.layout.Shape": ("id", "mask", "best_prio", "entries", "fmask", "filter"),
    "bpfgate.policy.live.LiveHook": ("best", "by_name", "c", "conf", "count", "filters", "fresh", "ifindex", "limits",
                                     "low_free", "order", "owners", "quarantine", "tree_protos"),
    # Hook members added (cgroup-*) keep older snapshots loadable: no version bump
    "bpfgate.policy.model.Hook": ("tc-ingress", "tc-egress", "xdp", "cgroup-ingress", "cgroup-egress", "cgroup-connect",
                                  "cgroup-bind"),
    "bpfgate.policy.model.Log": ("rate",),
    "bpfgate.policy.model.RateLimit": ("rate", "unit", "per", "burst", "over"),
    "bpfgate.policy.model.Redirect": ("interface", "direction", "on_gone"),
    "bpfgate.policy.model.Reject": ("with_", "rate"),
    "bpfgate.policy.model.Rule": ("name", "src", "dst", "protocol", "src_port", "dst_port", "tcp_flags",
                                  "icmp_type", "icmp_code", "vlan", "ct", "action", "redirect", "reject", "mark",
                                  "rate_limit", "log", "count", "comment", "negated", "owner"),
    "bpfgate.policy.prefixes.Classes": ("trees", "gen", "set_bits", "packed"),
    "bpfgate.policy.prefixes.Packed": ("top_keys", "top_vals", "pfx_keys", "pfx_vals"),
    "bpfgate.policy.prefixes.Tree": ("tree", "width", "prefixes", "top", "pfx", "nested", "ladder", "elems", "members",
                                     "kid", "short"),
    "bpfgate.policy.sources.RuleSources": ("_blob", "_edits", "_rules"),
}


def pickled_layout(obj) -> dict[str, tuple]:
    """The fields of every bpfgate class a pickle of `obj` holds."""
    seen: dict[str, tuple] = {}

    class Recorder(pickle.Pickler):
        def reducer_override(self, o):
            t = type(o)
            if t.__module__.startswith("bpfgate"):
                if isinstance(o, enum.Enum):
                    f = tuple(m.value for m in t)
                elif isinstance(o, BaseModel):
                    f = tuple(t.model_fields)
                elif dataclasses.is_dataclass(o):
                    f = tuple(x.name for x in dataclasses.fields(o))
                    f += tuple(sorted(set(getattr(o, "__dict__", {})) - set(f)))
                elif hasattr(o, "_fields"):
                    f = tuple(o._fields)
                else:
                    f = tuple(sorted(vars(o)))
                seen[f"{t.__module__}.{t.__qualname__}"] = f
            return NotImplemented

    Recorder(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return seen


def test_snapshot_layout_matches_its_version():
    live = live_of(HookPolicy.model_validate({"default": "deny", "rules": RICH}))
    live.ifindex = None
    got = pickled_layout({"live": live, "pending": []})
    got |= pickled_layout(dict(live.c.source))   # the rules: a pickle of their own after the state (RuleSources)
    got |= pickled_layout(live.c.classes)        # a pickle of their own after the state (CompiledHook.parts_apart)
    assert (S.SNAPSHOT_VERSION, got) == (15, LAYOUT), (
        "what the engine snapshot pickles changed layout: bump SNAPSHOT_VERSION in bpfgate/engine/state.py "
        "(older snapshots then ask to reattach instead of loading wrongly) and update LAYOUT and the version here")


def test_rules_of_a_loaded_snapshot_are_read_when_first_used_and_edits_before_that_kept():
    """The saved rules are one blob (policy/sources.py): an engine opened for a live edit never unpickles them,
    and the edit it makes meanwhile is there when they are read."""
    from bpfgate.policy.sources import RuleSources

    live = live_of(HookPolicy.model_validate({"rules": RICH}))
    want = dict(live.c.source)
    back = pickle.loads(pickle.dumps(live.c.source))
    assert isinstance(back, RuleSources) and back._blob is not None
    extra = Rule.model_validate({"name": "extra", "protocol": "udp"})
    first = next(iter(want))
    back[999] = extra
    back.discard(first)
    assert back[999] is extra and back._blob is not None          # an edit alone reads nothing
    again = pickle.loads(pickle.dumps(back))                        # saved unread: blob and edits as they were
    for got in (back, again):
        assert dict(got) == {k: v for k, v in want.items() if k != first} | {999: extra}
        assert got._blob is None


def _pickled_by_pydantic(obj) -> bytes:
    """As bpfgate pickled rules before saving only their non-default values (snapshots saved then)."""
    import copyreg

    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    p.dispatch_table = {k: v for k, v in copyreg.dispatch_table.items() if k is not Rule}
    p.dump(obj)
    return buf.getvalue()


def test_rules_pickle_as_their_non_default_values_and_old_pickles_load():
    rng = random.Random(7)
    rules = [rule(d) for d in RICH] + [random_rule(rng, i) for i in range(300)]
    for r in rules:
        for blob in (pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL), _pickled_by_pydantic(r)):
            back = pickle.loads(blob)
            assert back == r and hash(back) == hash(r)
            assert back.model_dump(exclude_unset=True) == r.model_dump(exclude_unset=True)
    assert len(pickle.dumps(rules)) < len(_pickled_by_pydantic(rules))


def test_saved_rules_are_rows_in_chunks_and_a_blob_whose_rule_had_another_field_loads(monkeypatch):
    """The rules' blob holds rows of field values (policy/sources.py), pickled a chunk of rules at a time;
    a blob whose Rule had another field reads the same."""
    from bpfgate.policy import sources

    monkeypatch.setattr(sources, "CHUNK", 100)
    rng = random.Random(11)
    plain = [rule({"name": f"p{i}", "src": f"198.18.{i}.0/24", "action": "drop"}) for i in range(2)]
    rules = dict(enumerate([*plain, *map(rule, RICH), *(random_rule(rng, i) for i in range(300))]))
    rows = pickle.loads(pickle.dumps(sources.RuleSources(rules)))
    assert len(rows._blob) == -(-len(rules) // 100)
    chunks = []
    for blob in sources._encode(rules):   # a field since removed, one not there yet
        fields, field_sets, table = pickle.loads(blob)
        chunks.append(pickle.dumps((fields[:-1] + ("gone",), field_sets, [(*r[:-1], "x") for r in table])))
    other = sources.RuleSources.__new__(sources.RuleSources)
    other.__setstate__({"rows": chunks, "edits": {}})
    for got in (rows, other):
        assert got._blob is not None and dict(got) == rules
        for rid, r in rules.items():
            assert got[rid].model_dump(exclude_unset=True) == r.model_dump(exclude_unset=True)
    a, b = rows[0], rows[1]
    assert a.model_fields_set is b.model_fields_set   # shared: rules are frozen ...
    a.model_copy(update={"comment": "x"})             # ... and a copy changes its own
    assert b.model_fields_set == {"name", "src", "action"}


def test_saved_listing_follows_the_journal(store):
    """A listing saved with a state, read by another process after live edits: the journal's lines replayed
    onto it give the rows (and slots) of the edited state; a line being written, or a new snapshot, make it
    no listing of the running state (the reader loads the state instead)."""
    from bpfgate.engine.engine import listing_of

    rng = random.Random(11)

    def random_rule(rng, i):   # few shapes (an edit needing a 17th is refused), some with options
        d = rng.choice([{"src": f"198.18.{rng.randrange(256)}.0/24", "action": "drop"},
                        {"protocol": "tcp", "dst_port": rng.randrange(1, 65536), "comment": f"c{i}"},
                        {"dst": f"fd00::{i:x}/128", "mark": 7}])
        return rule({"name": f"n{i}", **d})

    live = live_of(HookPolicy.model_validate({"default": "deny", "rules": RICH}))
    store.snapshot(live, [])
    store.save_fresh_listing(listing_of(live.c))
    made = 100
    for _ in range(60):
        names = list(live.by_name)
        op = rng.choice(["add", "add", "delete", "replace", "batch"]) if names else "add"
        if op == "add":
            new, pos = random_rule(rng, made), rng.choice([None, rng.randrange(len(names) + 1), 10 ** 6])
            live.add(new, pos)
            store.journal("add", rule=new, position=pos, slots={new.name: live.by_name[new.name]})
        elif op == "delete":
            name = rng.choice(names)
            live.delete(name)
            store.journal("delete", name=name)
        elif op == "replace":
            name, new = rng.choice(names), random_rule(rng, made)
            live.replace(name, new)
            store.journal("replace", name=name, rule=new, slots={new.name: live.by_name[new.name]})
        else:   # a batch: a delete, then two adds
            gone, a, b = rng.choice(names), random_rule(rng, made), random_rule(rng, made + 1)
            at = rng.randrange(len(names))
            live.batch([("delete", gone), ("add", a, at), ("add", b, None)])
            store.journal("batch", edits=[{"op": "delete", "name": gone},
                                          {"op": "add", "rule": rule_data_of(a), "position": at},
                                          {"op": "add", "rule": rule_data_of(b), "position": None}],
                          slots={n: live.by_name[n] for n in (a.name, b.name)})
        made += 2
        got = S.StateStore("eth0", Hook.TC_INGRESS, "ns1").current_listing()   # another process's reader
        want = listing_of(live.c)
        assert got is not None and got.rids == want.rids and got.rows() == want.rows()
    with open(store._p("journal.jsonl"), "a") as f:
        f.write('{"op": "delete", "na')   # a line being written
    assert S.StateStore("eth0", Hook.TC_INGRESS, "ns1").current_listing() is None
    store.snapshot(live, [])   # another state: the listing was the old one's
    assert S.StateStore("eth0", Hook.TC_INGRESS, "ns1").current_listing() is None


def rule_data_of(r: Rule) -> dict:
    from bpfgate.policy.ruledata import rule_data

    return rule_data(r)


def test_a_preloaded_engine_serves_an_attach_whose_tables_it_holds():
    """Engine.load's arguments of a preload against an attach's: the same programs and arrays, the same
    tables preallocated with at least the room asked and at most twice it."""
    from bpfgate.engine.engine import _serves

    kw = {"ct": True, "also": ("bg_ct_track",), "max_entries": {"bg_rules": 16384}, "prealloc": {"bg_pfx": 300_000}}
    assert _serves(kw, kw)
    assert _serves(kw, kw | {"prealloc": {"bg_pfx": 150_000}})
    assert not _serves(kw, kw | {"prealloc": {"bg_pfx": 149_999}})   # more than twice the room: memory held
    assert not _serves(kw, kw | {"prealloc": {"bg_pfx": 300_003}})   # too small
    assert not _serves(kw, kw | {"prealloc": {"bg_pfx": 300_000, "bg_cls": 100_000}})
    assert not _serves(kw, kw | {"prealloc": {}})
    assert not _serves(kw, kw | {"ct": False})
    assert not _serves(kw, kw | {"max_entries": {"bg_rules": 32768}})
