"""Engine state that must outlive the process: the LiveHook (rule names <-> slots, priorities, key owners)
as a snapshot plus a journal of the live edits made since, under /run/bpfgate/engine/<netns>/<dev>/<hook>/.

snapshot.pickle is written on attach and swap: a header line `bpfgate-engine-snapshot <N>\n`, then a pickle
of {"live": LiveHook, "pending": pending freed slots} without the hook's largest parts, then a pickle of
each of these (LiveHook.parts_apart) (byte keys and a large index: fast to load; the
directory is root-only). N is SNAPSHOT_VERSION, bumped whenever what the pickle holds changes layout
(LiveHook, CompiledHook, Classes, layout records, Rule ...): a snapshot without the header (bpfgate before
versioning), of another version, or that does not unpickle loads as one BpfgateError ("detach it and apply
the policy again") instead of a traceback or a half-working engine.

A live edit appends one JSON line to journal.jsonl, e.g. {"op": "add", "rule": {...}, "position": 0,
"slots": {"web": 12}}, a rule being its fields as the policy file has them (bpfgate.policy.ruledata), so
journals do not depend on the classes' layout; lines written before that hold a rule as a base64 pickle (a
string) and still load. "slots" (the rules' slots after the edit) is for `rules`, which replays the lines
onto the rows it saved (engine/listing.py) instead of loading the state; opening does not read it.
A batch of edits made as one atomic step (Engine.apply_edits) is one line, {"op": "batch", "edits": [...]}:
a journal cut short holds all of it or none.
Opening replays the lines through LiveHook, which is deterministic, so another process ends up with the
same state without rewriting the snapshot (an edit stays ~1 ms at 100k rules). Writers hold an flock on
the directory's lock file.

writing.json exists while an edit or swap writes the kernel and its new state is not saved yet: found by
the next process that takes the lock, it means that edit was cut short (kill -9, a failed batch write), and
the kernel is repaired to the saved state (engine/recover.py) before anything reads or edits it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pickle
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, Callable

from bpfgate.cgroups import dir_name, from_dir_name
from bpfgate.errors import BpfgateError
from bpfgate.families import state_root
from bpfgate.policy.hooks import Hook

if TYPE_CHECKING:   # the models and LiveHook are imported where a state is read or written: listing the
    # engines and their state versions (apply's no-change check) needs neither
    from bpfgate.policy.live import LiveHook
    from bpfgate.policy.model import Rule

    from .listing import Listing

STATE_ROOT = state_root("engine")   # the attachment record of an engine names its directory: detach removes it

# Bump whenever a class the snapshot pickles changes layout (fields added, removed, renamed or retyped):
# 1 = snapshots without a header (before versioning); 2 = CompiledHook.classes (stage 0); 3 = the edit
# index taken over from the compiler (CompiledHook.contested/order/by_name/low_free/_conf); 4 = Rule.owner;
# 5 = Rule.comment; 6 = Rule.negated; 7 = CompiledHook.source a RuleSources (one blob, read when first used);
# 8 = Redirect.on_gone; 9 = action reject (Rule.reject, RuleAction.reject_with/reject_rate); 10 = named sets
# (CompiledHook.sets, Classes.set_bits, Tree's ladder state, SetRef in rules); 11 = SetState.keys (elements
# as integers); 12 = the shapes' filters (Shape.fmask/filter, LiveHook.filters); 13 = Tree.nested not saved
# (made again from Tree.prefixes); 14 = RuleSources' blob a list of pickles of a few thousand rules each;
# 15 = the prefix classes, the rules and the bg_cls entries with their owners pickled after the state,
# each on its own (LiveHook.parts_apart).
SNAPSHOT_VERSION = 15
# Rules pickle as their non-default values (policy/model.py); snapshots holding pydantic's own pickles of
# them still load, so that needed no bump (a bpfgate before it reads the new ones as unreadable, with the hint).
SNAPSHOT_MAGIC = b"bpfgate-engine-snapshot "
# what a pickle of another layout fails with (a missing module/class/attribute, a changed constructor ...)
_UNPICKLE_ERRORS = (pickle.UnpicklingError, AttributeError, ImportError, EOFError, TypeError, ValueError,
                    KeyError, IndexError)
REATTACH = "detach it and apply the policy again"
SNAPSHOT_NEXT = "snapshot.next.pickle"   # a state saved ahead of the kernel, taken once the kernel matches it


def _rule(v) -> Rule:
    """A journal line's rule: its fields (a dict), or a base64 pickle (a string, journals of older bpfgate)."""
    from bpfgate.policy.model import Rule
    from bpfgate.policy.ruledata import rule_from_data

    if isinstance(v, dict):
        return rule_from_data(v)
    if not isinstance(v, str):
        raise TypeError(f"journal entry is not a rule: {type(v).__name__}")
    rule = pickle.loads(base64.b64decode(v))
    if not isinstance(rule, Rule):
        raise ValueError("journal entry is not a rule")
    return rule


def _is_state(state) -> bool:
    """Whether a snapshot's first pickle is an engine state: {"live": LiveHook, "pending": ...}."""
    from bpfgate.policy.live import LiveHook

    return isinstance(state, dict) and isinstance(state.get("live"), LiveHook) and "pending" in state


def _identity(st: os.stat_result) -> tuple:
    """A saved file's identity: a rewrite (a new file renamed over it) changes it."""
    return st.st_ino, st.st_mtime_ns, st.st_size


def _brief(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200] + '...' if len(text) > 200 else text}"


class StateStore:
    def __init__(self, dev: str, hook: Hook, netns_name: str | None):
        self.dir = os.path.join(STATE_ROOT, netns_name or "-", dir_name(dev), Hook(hook).value)
        self.where = f"{dev} {Hook(hook).value}" + (f" (netns {netns_name})" if netns_name else "")

    snapshot_id: tuple | None = None   # the saved snapshot this process's state was loaded from (listing's key)

    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exists(self) -> bool:
        return os.path.exists(self._p("meta.json"))

    @staticmethod
    def listing(netns_name: str | None) -> list[tuple[str, Hook]]:
        base = os.path.join(STATE_ROOT, netns_name or "-")
        out = []
        for dev in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            for h in Hook:
                if os.path.exists(os.path.join(base, dev, h.value, "meta.json")):
                    out.append((from_dir_name(dev), h))
        return out

    @contextmanager
    def locked(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        with open(self._p("lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _write(self, name: str, data: bytes | Callable[[BinaryIO], None]) -> None:
        """Replace file `name` whole (a reader sees the old or the new one): `data`, or what it writes."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = self._p(name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                if callable(data):
                    data(f)
                else:
                    f.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, self._p(name))

    def begin_write(self, op: str) -> None:
        """Mark the kernel as being changed ahead of the saved state (see the module docstring)."""
        self._write("writing.json", json.dumps({"op": op, "pid": os.getpid()}).encode())

    def end_write(self) -> None:
        """The kernel and the saved state agree again."""
        try:
            os.unlink(self._p("writing.json"))
        except FileNotFoundError:
            pass

    def interrupted(self) -> dict | None:
        """The mark of an edit that was cut short (read under the lock: a live writer holds it), or None."""
        try:
            with open(self._p("writing.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:   # torn mid-write: still an edit that did not finish
            return {"op": "?"}

    def version(self) -> tuple:
        """Changes whenever another process snapshots or journals: (snapshot mtime, journal size)."""
        out = []
        for name in ("snapshot.pickle", "journal.jsonl"):
            try:
                st = os.stat(self._p(name))
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def save_meta(self, meta: dict) -> None:
        self._write("meta.json", json.dumps(meta).encode())

    def load_meta(self) -> dict:
        with open(self._p("meta.json")) as f:
            return json.load(f)

    def snapshot(self, live: LiveHook, pending_free, name: str = "snapshot.pickle") -> None:
        """Save the state whole (the journal starts again); under another `name`: a state to take later
        (take_snapshot), the journal left alone."""
        def save(f: BinaryIO) -> None:   # pickled into the file: at 100k rules no 34 MB copies in memory
            f.write(SNAPSHOT_MAGIC + b"%d\n" % SNAPSHOT_VERSION)
            rest, parts = live.parts_apart()   # each pickle's memo is freed before the next one starts
            pickle.dump({"live": rest, "pending": pending_free}, f, protocol=pickle.HIGHEST_PROTOCOL)
            for part in parts:
                pickle.dump(part, f, protocol=pickle.HIGHEST_PROTOCOL)

        fn, live.ifindex = live.ifindex, None    # a function does not pickle; reattached on load
        try:
            self._write(name, save)
        finally:
            live.ifindex = fn
        if name == "snapshot.pickle":
            self._write("journal.jsonl", b"")
            self.snapshot_id = None   # the state in memory is this process's own, not a loaded one

    def presave(self, live: LiveHook) -> bool:
        """The first state of an engine being attached, saved as SNAPSHOT_NEXT before the kernel has it
        (taken by take_snapshot once it does). False when that failed: the caller saves it afterwards."""
        try:
            self.snapshot(live, [], name=SNAPSHOT_NEXT)
            return True
        except OSError:   # the directory removed meanwhile (a concurrent detach took it for stale state)
            return False

    def take_snapshot(self, name: str) -> bool:
        """Make the state saved as `name` the saved state (if it is still there: else False): the journal is
        emptied first, so a crash in between leaves `name` to take again, never the new snapshot with old edits."""
        if not os.path.exists(self._p(name)):
            return False
        self._write("journal.jsonl", b"")
        os.replace(self._p(name), self._p("snapshot.pickle"))
        self.snapshot_id = None
        return True

    def drop(self, name: str) -> None:
        try:
            os.unlink(self._p(name))
        except FileNotFoundError:
            pass

    def journal(self, op: str, **kw) -> None:
        from bpfgate.policy.model import Rule
        from bpfgate.policy.ruledata import rule_data

        rec = {"op": op}
        for k, v in kw.items():
            rec[k] = rule_data(v) if isinstance(v, Rule) else v   # plain JSON, as in the policy file
        with open(self._p("journal.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _unreadable(self, cause: str) -> BpfgateError:
        return BpfgateError(f"load the saved state of the engine on {self.where}", cause, hint=REATTACH)

    def _load_snapshot(self) -> dict:
        # before unpickling: an import error of bpfgate is no bad snapshot
        from bpfgate.policy.prefixes import Classes
        from bpfgate.policy.sources import RuleSources

        try:
            with open(self._p("snapshot.pickle"), "rb") as f:
                head = f.readline(len(SNAPSHOT_MAGIC) + 16)
                if not head.startswith(SNAPSHOT_MAGIC) or not head.endswith(b"\n"):
                    raise self._unreadable("its snapshot has no format version (saved by an older bpfgate)")
                version = head[len(SNAPSHOT_MAGIC):].strip().decode("ascii", "replace")
                if version != str(SNAPSHOT_VERSION):
                    raise self._unreadable(f"its snapshot has format version {version}, this bpfgate reads "
                                           f"version {SNAPSHOT_VERSION} (saved by another bpfgate)")
                try:
                    state = pickle.load(f)
                    if not _is_state(state):
                        raise self._unreadable("its snapshot does not hold an engine state")
                    parts = pickle.load(f), pickle.load(f), pickle.load(f)   # LiveHook.parts_apart
                    if not (isinstance(parts[0], Classes) and isinstance(parts[1], RuleSources)):
                        raise self._unreadable("its snapshot does not hold an engine state")
                    state["live"].rejoin(parts)
                    self.snapshot_id = _identity(os.fstat(f.fileno()))
                except _UNPICKLE_ERRORS as e:
                    raise self._unreadable(f"its snapshot does not load ({_brief(e)})") from None
        except FileNotFoundError:   # a torn attach (meta.json, no snapshot): detach still cleans it up
            raise self._unreadable("its snapshot is missing") from None
        return state

    def _read_listing(self) -> dict:
        try:
            with open(self._p("listing.pickle"), "rb") as f:
                saved = pickle.load(f)
            return saved if isinstance(saved, dict) else {}
        except (OSError, *_UNPICKLE_ERRORS):
            return {}

    def load_listing(self) -> dict[int, tuple]:
        """The rows `bpfgate rules` shows (policy.listed.data_row) by rule id, saved by an earlier listing of
        the snapshot this state was loaded from; {} when there are none (another snapshot's, none, unreadable).
        A row stands for its rule only while the rule is unchanged since that snapshot: the caller takes
        the rows of rules edited since (the journal's) from the rules themselves."""
        from .listing import Listing

        if self.snapshot_id is None:
            return {}
        saved = self._read_listing()
        if saved.get("snapshot") != self.snapshot_id:
            return {}
        try:
            return Listing.from_state(saved["listing"]).by_rid()
        except (KeyError, TypeError, ValueError):   # a listing of another layout
            return {}

    def current_listing(self) -> Listing | None:
        """The running rules as saved beside the state, read without loading it: a listing of the whole state
        of the snapshot saved now, with the journal's edits made since it was saved replayed onto it (and
        saved again so, for the next reader). None when there is no such listing, an edit is cut short, or
        the journal since is not one the listing can follow."""
        from .listing import Listing

        try:
            snap = _identity(os.stat(self._p("snapshot.pickle")))
        except FileNotFoundError:
            return None
        if self.interrupted() is not None:
            return None
        saved = self._read_listing()
        if saved.get("snapshot") != snap or not isinstance(saved.get("journal"), tuple):
            return None   # another snapshot's, or not the whole state (rows only)
        try:
            listing = Listing.from_state(saved["listing"])
        except (KeyError, TypeError, ValueError):
            return None
        seen = saved["journal"]   # the journal's version() when the rows were its state: (mtime, size, inode)
        journal = self.version()[1]
        if journal == seen:
            return listing
        if journal is None or journal[2] != seen[2] or journal[1] < seen[1]:
            return None   # emptied or replaced since: the journal of another snapshot
        try:   # the lines appended since (a journal is only appended to until the next snapshot)
            with open(self._p("journal.jsonl"), "rb") as f:
                if os.fstat(f.fileno()).st_ino != journal[2]:
                    return None
                f.seek(seen[1])
                tail = f.read(journal[1] - seen[1])
            if tail and not tail.endswith(b"\n"):
                return None   # a line being written
            records = [json.loads(line) for line in tail.splitlines() if line.strip()]
            if not all(isinstance(r, dict) for r in records) or not listing.replay(records):
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):   # a line this listing cannot follow
            return None
        self.snapshot_id = snap
        self.save_listing(listing, journal)
        return listing

    def save_fresh_listing(self, listing: Listing) -> None:
        """Keep the rows of the state its writer just saved (a snapshot, its journal empty) for the next
        listing. Not when an edit was journaled already: the listing must be the whole state."""
        try:
            snap = _identity(os.stat(self._p("snapshot.pickle")))
        except FileNotFoundError:
            return
        journal = self.version()[1]
        if journal is not None and not journal[1]:
            self.snapshot_id = snap
            self.save_listing(listing, journal)

    def save_listing(self, listing: Listing, journal: tuple | None = None) -> None:
        """Keep the rows of this state's snapshot for the next listing. `journal`: the journal's version()
        when the rows are the whole saved state's (no edit since it was read), so a listing can skip loading
        the state (current_listing); None: rows only, of the rules unchanged since the snapshot. Readers write it without the lock: each through its own temporary file; a row of
        a rule edited since the snapshot is never read (see load_listing)."""
        if self.snapshot_id is None:
            return
        tmp = self._p(f"listing.pickle.{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                pickle.dump({"snapshot": self.snapshot_id, "listing": listing.to_state(),
                             "journal": journal},
                            f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self._p("listing.pickle"))
        except OSError:   # only a cache: a full disk or a removed directory (detached meanwhile) costs time
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _load_journal(self) -> list[dict]:
        try:
            with open(self._p("journal.jsonl")) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("op"), str):
                    raise TypeError("not an edit record")
                if "rule" in rec:
                    rec["rule"] = _rule(rec["rule"])
                for e in rec.get("edits", ()):   # a batch: its edits' rules
                    if "rule" in e:
                        e["rule"] = _rule(e["rule"])
            except _UNPICKLE_ERRORS as e:   # pydantic ValidationError, binascii.Error: ValueError
                raise self._unreadable(f"its journal line {n} does not load ({_brief(e)})") from None
            out.append(rec)
        return out

    def load_live(self, ifindex) -> LiveHook:
        state = self._load_snapshot()
        live: LiveHook = state["live"]
        live.ifindex = ifindex
        self._pending = list(state["pending"])
        journal = self._load_journal()
        for rec in journal:   # the same edits, in order, reach the same state (deterministic)
            op = rec["op"]
            if op == "add":
                diff = live.add(rec["rule"], rec.get("position"))
            elif op == "delete":
                diff = live.delete(rec["name"])
            elif op == "replace":
                diff = live.replace(rec["name"], rec["rule"])
            elif op == "batch":
                diff = live.batch([("delete", e["name"]) if e["op"] == "delete" else
                                   ("replace", e["name"], e["rule"]) if e["op"] == "replace" else
                                   ("add", e["rule"], e.get("position")) for e in rec["edits"]])
            elif op in ("set_add", "set_del"):
                for d in live.set_edit(rec["name"], rec["elements"], op == "set_add"):
                    if d.rules_free:
                        self._pending.append((0.0, list(d.rules_free)))
                continue
            elif op == "release":
                live.release(rec["slots"])
                self._pending = [(t, s) for t, s in self._pending if s != rec["slots"]]
                continue
            else:
                continue
            if diff.rules_free:
                self._pending.append((0.0, list(diff.rules_free)))
        return live

    def pending_free(self):
        return getattr(self, "_pending", [])

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
        for d in (os.path.dirname(self.dir), os.path.dirname(os.path.dirname(self.dir))):
            try:
                os.rmdir(d)
            except OSError:
                break
