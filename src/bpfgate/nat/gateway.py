"""The NAT / load-balancing program of one interface (bpf/nat.bpf.c), its pinned maps and its configuration.

    gw = Gateway.open("eth0", netns="blue")          # attaches tc ingress+egress on first use (pinned maps)
    gw.add_rule(rules.dnat("web", "tcp", "198.18.0.100:80", "198.18.1.2:8080"))
    gw.add_service(rules.service("api", "tcp", "198.18.0.100:443", ["198.18.1.2@2", "198.18.1.3"]))
    change = gw.set_backend("api", "198.18.1.3", drained=True)   # change.moved: share of slots moved
    gw.stats(); gw.flows(); gw.detach()

One writer at a time (flock on the state directory); every change is checked whole before the kernel is
touched. The configuration (names, weights, table regions) is kept under /run/bpfgate/nat/ with the
attachment; the kernel maps are pinned under /sys/fs/bpf/bpfgate/nat/. `bpfgate detach` removes both.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import random
import struct
from dataclasses import dataclass, replace

from bpfgate import attach, contract
from bpfgate.errors import BpfgateError, NotFound, PolicyError
from bpfgate.kernel import netlink, pins
from bpfgate.kernel.maps import Map
from bpfgate.kernel.objects import BpfObject

from . import maglev
from .rules import PROTOS, Backend, Config, NatRule, Service, check_weight, rule_from, service_from

C = contract.constants("nat")
NAT_SRC, NAT_DST, NAT_VIEW = C.BG_NAT_SRC, C.BG_NAT_DST, C.BG_NAT_VIEW
STATELESS = C.BG_NATR_STATELESS
STAT_NAMES = {getattr(C, k): k.removeprefix("BG_NAT_STAT_").lower() for k in C.enum("bg_nat_stat")
              if k != "BG_NAT_STAT_MAX"}
MAPS = ("bg_ct", "nat_in_dst", "nat_out_src", "nat_snat", "lb_svc", "lb_backends", "lb_slots", "nat_stats", "lb_flows")
# maps added after the first release: a NAT attached before them runs without (opened when pinned)
LATER_MAPS = ("lb_flows",)
OWNER = "nat"
SLOT_OWNER = {"ingress": "nat", "egress": "nat-out"}   # its two tc slots (bpfgate.families)
DIRECTIONS = ("ingress", "egress")
DEFAULT_CT_SIZE = 65536
CLOSED_TIMEOUT_S = 10.0   # a TCP flow that ended (RST, FIN each way) keeps its entries (and SNAT port) this long


def _ns(netns: str | None) -> str:
    return netns or "-"


def pin_dir(dev: str, netns: str | None = None) -> str:
    return pins.pin_path(OWNER, _ns(netns), dev)


def state_dir(dev: str, netns: str | None = None) -> str:
    return os.path.join(attach.state_root(OWNER), _ns(netns), dev, "tc")


def _addr16(a: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> bytes:
    a = ipaddress.ip_address(a)
    return a.packed.ljust(16, b"\0")


@dataclass(frozen=True)
class Change:
    """What a load-balancer change did to a service's table."""

    service: str
    moved: float            # share of the table's slots whose backend changed (0..1)
    slots: int
    shares: dict[str, float]  # backend -> share of the slots now

    def to_dict(self) -> dict:
        return {"service": self.service, "moved": round(self.moved, 6), "moved_percent": round(100 * self.moved, 3),
                "slots": self.slots, "shares": {k: round(v, 6) for k, v in self.shares.items()}}


class Gateway:
    def __init__(self, dev: str, netns: str | None, maps: dict[str, Map], cfg: Config):
        self.dev, self.netns, self.maps, self.cfg = dev, netns, maps, cfg
        self._K = contract.struct(OWNER, "bg_nat_key")
        self._T = contract.struct(OWNER, "bg_nat_target")
        self._SK = contract.struct(OWNER, "bg_snat_key")
        self._SVC = contract.struct(OWNER, "bg_lb_svc")
        self._BE = contract.struct(OWNER, "bg_lb_backend")

    # ---- open / attach / detach -------------------------------------------------------------------

    @classmethod
    def exists(cls, dev: str, netns: str | None = None) -> bool:
        return os.path.exists(os.path.join(pin_dir(dev, netns), "nat_stats"))

    @classmethod
    def open(cls, dev: str, netns: str | None = None, *, create: bool = True, method: str = "tc",
             ct_size: int = DEFAULT_CT_SIZE, slots: int = 1 << 20, closed_timeout: float = CLOSED_TIMEOUT_S
             ) -> "Gateway":
        """The running NAT of `dev` (from its pins), or, with create, a new one attached now (`closed_timeout`:
        seconds a TCP flow that ended keeps its translation, from its last packet)."""
        netlink.ifindex(dev, netns)   # NotFound: no such interface / namespace
        if cls.exists(dev, netns):
            return cls(dev, netns, cls._open_maps(dev, netns), _read_config(dev, netns))
        if not create:
            raise NotFound(f"open NAT on {dev}", "bpfgate runs no NAT there",
                           hint="add a rule or service first")
        return cls._attach(dev, netns, method, ct_size, slots, closed_timeout)

    @staticmethod
    def _open_maps(dev: str, netns: str | None) -> dict[str, Map]:
        d = pin_dir(dev, netns)
        K, T = contract.struct(OWNER, "bg_nat_key"), contract.struct(OWNER, "bg_nat_target")
        types = {"nat_in_dst": (K, T), "nat_out_src": (K, T), "nat_snat": (contract.struct(OWNER, "bg_snat_key"), T),
                 "lb_svc": (ctypes.c_uint32, contract.struct(OWNER, "bg_lb_svc")),
                 "lb_backends": (ctypes.c_uint32, contract.struct(OWNER, "bg_lb_backend")),
                 "lb_slots": (ctypes.c_uint32, ctypes.c_uint32), "nat_stats": (ctypes.c_uint32, ctypes.c_uint64),
                 "bg_ct": (contract.struct(OWNER, "bg_ct_key"), contract.struct(OWNER, "bg_ct_value")),
                 "lb_flows": (ctypes.c_uint32, ctypes.c_uint64)}
        return {name: Map.from_pin(os.path.join(d, name), *types[name]) for name in MAPS
                if name not in LATER_MAPS or os.path.exists(os.path.join(d, name))}

    @classmethod
    def _attach(cls, dev: str, netns: str | None, method: str, ct_size: int, slots: int,
                closed_timeout: float) -> "Gateway":
        d, sd = pin_dir(dev, netns), state_dir(dev, netns)
        obj = BpfObject.open(OWNER)
        atts = []
        try:
            obj.set_max_entries("bg_ct", ct_size)
            obj.set_max_entries("lb_slots", slots)
            obj.set_rodata({"cfg_nat_timeout_closed_ns": int(closed_timeout * 1e9)})
            obj.load()
            os.makedirs(sd, exist_ok=True)
            _write_config(dev, netns, Config())
            for name in MAPS:
                obj.map(name).pin(os.path.join(d, name))
            for direction in DIRECTIONS:
                point = attach.Point.device(dev, direction, netns)
                opts = attach.Options(owner=SLOT_OWNER[direction], method=method, replace=False, pins=[d], state=[sd])
                kind = "tcx" if method == "tcx" else "tc"
                atts.append(attach.attach(obj.program(f"bg_nat_{direction}"), point, opts, kind=kind))
        except BaseException:
            for att in atts:
                with contextlib.suppress(BpfgateError):
                    attach.detach(att)
            pins.unpin(d)
            if os.path.isdir(sd):
                attach.remove_state(sd)
            obj.close()
            raise
        obj.close()   # the attachments and pins hold programs and maps
        return cls(dev, netns, cls._open_maps(dev, netns), Config())

    def detach(self) -> list[str]:
        done = []
        for att in attach.records():
            if att.owner in SLOT_OWNER.values() and att.dev == self.dev and att.netns == self.netns:
                done += attach.detach(att)
        pins.unpin(pin_dir(self.dev, self.netns))
        sd = state_dir(self.dev, self.netns)
        if os.path.isdir(sd):
            attach.remove_state(sd)
        self.close()
        return done

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps = {}

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def editing(self):
        """One writer at a time; the configuration re-read under the lock and written back after."""
        path = os.path.join(state_dir(self.dev, self.netns), "lock")
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            self.cfg = _read_config(self.dev, self.netns)
            yield self.cfg
            _write_config(self.dev, self.netns, self.cfg)

    # ---- NAT rules ----------------------------------------------------------------------------------

    def _key(self, family: int, proto: int, port: int, addr) -> object:
        return self._K(family=family, proto=proto, port=port,
                       addr=(ctypes.c_uint8 * 16).from_buffer_copy(_addr16(addr)))

    def _target(self, addr, port: int = 0, port_hi: int = 0, flags: int = 0, svc: int = 0) -> object:
        return self._T(addr=(ctypes.c_uint8 * 16).from_buffer_copy(_addr16(addr)), port=port, port_hi=port_hi,
                       flags=flags, svc=svc)

    def _entries(self, r: NatRule) -> list[tuple[str, object, object]]:
        """(map, key, value) of a rule."""
        if r.kind == "dnat":
            m, t, proto = r.dst, r.target, PROTOS[r.proto]
            if not r.stateless:
                return [("nat_in_dst", self._key(m.family, proto, m.port, m.addr), self._target(t.addr, t.port))]
            back_port = (t.port or m.port) if m.port else 0   # the backend's replies leave from here
            return [("nat_in_dst", self._key(m.family, proto, m.port, m.addr),
                     self._target(t.addr, t.port, flags=STATELESS)),
                    ("nat_out_src", self._key(m.family, proto, back_port, t.addr),
                     self._target(m.addr, m.port, flags=STATELESS))]
        net, t = r.src, r.target
        if not r.stateless:
            key = self._SK(prefixlen=8 + net.prefixlen, family=net.version,
                           addr=(ctypes.c_uint8 * 16).from_buffer_copy(_addr16(net.network_address)))
            return [("nat_snat", key, self._target(t.addr, r.ports[0], r.ports[1]))]
        out = []
        for proto in PROTOS.values():
            out.append(("nat_out_src", self._key(net.version, proto, 0, net.network_address),
                        self._target(t.addr, flags=STATELESS)))
            out.append(("nat_in_dst", self._key(net.version, proto, 0, t.addr),
                        self._target(net.network_address, flags=STATELESS)))
        return out

    def _taken(self, cfg: Config, r: NatRule) -> None:
        """Refuse a rule whose kernel keys another rule or service holds."""
        mine = {(m, bytes(k)) for m, k, _ in self._entries(r)}
        for other in cfg.rules.values():
            if other.name != r.name and mine & {(m, bytes(k)) for m, k, _ in self._entries(other)}:
                raise PolicyError(f"rule {r.name}", f"matches what rule {other.name} matches")
        for s in cfg.services.values():
            if ("nat_in_dst", bytes(self._svc_key(s))) in mine:
                raise PolicyError(f"rule {r.name}", f"matches the VIP of service {s.name}")

    def add_rule(self, r: NatRule) -> NatRule:
        with self.editing() as cfg:
            if r.name in cfg.rules:
                raise PolicyError(f"rule {r.name}", "a rule of that name exists", hint="delete it first")
            self._taken(cfg, r)
            done = []
            try:
                for m, k, v in self._entries(r):
                    self.maps[m].update(k, v)
                    done.append((m, k))
            except BaseException:
                for m, k in done:
                    self.maps[m].delete(k)
                raise
            cfg.rules[r.name] = r
        return r

    def delete_rule(self, name: str) -> NatRule:
        with self.editing() as cfg:
            r = cfg.rules.get(name)
            if r is None:
                raise NotFound(f"delete NAT rule {name} on {self.dev}", "no such rule")
            for m, k, _ in self._entries(r):
                self.maps[m].delete(k)
            del cfg.rules[name]
        return r

    def rules(self) -> list[NatRule]:
        return list(self.cfg.rules.values())

    # ---- load balancing ---------------------------------------------------------------------------

    def _svc_key(self, s: Service) -> object:
        ep = s.endpoint
        return self._key(ep.family, PROTOS[s.proto], ep.port, ep.addr)

    def _regions(self, cfg: Config, skip: str | None = None) -> list[tuple[int, int]]:
        svc_map = self.maps["lb_svc"]
        out = []
        for s in cfg.services.values():
            v = svc_map.lookup(s.index)
            if v is not None and v.size and s.name != skip:
                out.append((v.base, v.size))
        return sorted(out)

    def _alloc(self, cfg: Config, size: int, current: tuple[int, int] | None) -> int:
        """First free region of `size` slots (the service's current region stays taken until the switch)."""
        used = self._regions(cfg) + ([current] if current else [])
        cap, pos = self.maps["lb_slots"].max_entries, 0
        for base, n in sorted(used):
            if base - pos >= size:
                return pos
            pos = max(pos, base + n)
        if cap - pos >= size:
            return pos
        raise BpfgateError(f"load-balancer table of {size} slots on {self.dev}",
                           f"the slot array ({cap} slots) has no free region left",
                           hint="fewer services or smaller table_size")

    def _table(self, s: Service) -> list[str | None]:
        return maglev.build(s.weights(), s.table_size)

    def _install(self, cfg: Config, new: Service, old: Service | None) -> Change:
        """Backends, the new table in a free region, then the service switched to it in one map update,
        then what the old table referenced and no longer exists."""
        svc_map, be_map, slots = self.maps["lb_svc"], self.maps["lb_backends"], self.maps["lb_slots"]
        ep = new.endpoint
        ids = {}
        for b in new.backends:
            ids[b.name] = b.id
            be_map.update(b.id, self._BE(addr=(ctypes.c_uint8 * 16).from_buffer_copy(_addr16(b.addr)),
                                         port=b.port or ep.port, family=ep.family, svc=new.index + 1))
        table = self._table(new)
        cur = svc_map.lookup(new.index)
        current = (cur.base, cur.size) if cur is not None and cur.size and old is not None else None
        base = self._alloc(cfg, new.table_size, current)
        vals = struct.pack(f"={len(table)}I", *(ids[n] if n else 0 for n in table))
        keys = struct.pack(f"={len(table)}I", *range(base, base + len(table)))
        slots.update_batch_raw(keys, vals, len(table))
        svc_map.update(new.index, self._SVC(base=base, size=new.table_size, seed=new.seed))
        before = self._table(old) if old is not None else [None] * new.table_size
        if old is not None:
            for b in old.backends:
                if new.find(b.name) is None:
                    be_map.delete(b.id)   # its flows are chosen again (only those)
                    self._forget_backend(b.id)
        change = Change(new.name, maglev.disruption(before, table), new.table_size, maglev.shares(table))
        cfg.moved[new.name] = (round(change.moved * new.table_size), new.table_size)
        return change

    def _forget_backend(self, backend_id: int) -> None:
        if "lb_flows" in self.maps:
            self.maps["lb_flows"].delete(backend_id)

    def _with_ids(self, cfg: Config, s: Service, old: Service | None) -> Service:
        out = []
        for b in s.backends:
            prev = old.find(b.name) if old else None
            if prev is not None:
                out.append(replace(b, id=prev.id))
            else:
                out.append(replace(b, id=cfg.next_backend))
                cfg.next_backend += 1
        return s.with_backends(out)

    def add_service(self, s: Service) -> Change:
        with self.editing() as cfg:
            if s.name in cfg.services:
                raise PolicyError(f"service {s.name}", "a service of that name exists")
            key = self._svc_key(s)
            for o in cfg.services.values():
                if bytes(self._svc_key(o)) == bytes(key):
                    raise PolicyError(f"service {s.name}.vip", f"service {o.name} has that VIP")
            for r in cfg.rules.values():
                if ("nat_in_dst", bytes(key)) in {(m, bytes(k)) for m, k, _ in self._entries(r)}:
                    raise PolicyError(f"service {s.name}.vip", f"rule {r.name} matches that VIP")
            taken = {x.index for x in cfg.services.values()}
            index = next((i for i in range(self.maps["lb_svc"].max_entries) if i not in taken), None)
            if index is None:
                raise BpfgateError(f"add service {s.name}", "every service slot is taken")
            s = self._with_ids(cfg, replace(s, index=index, seed=random.getrandbits(32)), None)
            change = self._install(cfg, s, None)
            self.maps["nat_in_dst"].update(key, self._target(s.endpoint.addr, svc=index + 1))
            cfg.services[s.name] = s
        return change

    def update_service(self, s: Service) -> Change:
        """Replace a service's backends/weights/table size live (flows stay on their backends)."""
        with self.editing() as cfg:
            old = cfg.services.get(s.name)
            if old is None:
                raise NotFound(f"update service {s.name}", "no such service")
            if (s.proto, s.vip) != (old.proto, old.vip):
                raise PolicyError(f"service {s.name}.vip", "a service's VIP and protocol stay (delete it, add anew)")
            s = self._with_ids(cfg, replace(s, index=old.index, seed=old.seed), old)
            change = self._install(cfg, s, old)
            cfg.services[s.name] = s
        return change

    def set_backend(self, service: str, backend: Backend | str, *, weight: int | None = None,
                    drained: bool | None = None, remove: bool = False) -> Change:
        """Add (not there yet), re-weight, drain/undrain or remove one backend."""
        from .rules import backend as parse_backend

        s = self.service(service)
        b = backend if isinstance(backend, Backend) else parse_backend(backend, f"service {service}.backend")
        if weight is not None:
            check_weight(weight, f"service {service}.backend")
        have = s.find(b.name)
        if remove:
            if have is None:
                raise NotFound(f"remove backend {b.name} of {service}", "no such backend")
            bes = [x for x in s.backends if x.name != b.name]
        elif have is None:
            if ipaddress.ip_address(b.addr).version != s.endpoint.family:
                raise PolicyError(f"service {service}.backend", f"{b.name} is not IPv{s.endpoint.family}")
            bes = [*s.backends, replace(b, weight=weight or b.weight, drained=bool(drained))]
        else:
            new = replace(have, weight=weight if weight is not None else have.weight,
                          drained=have.drained if drained is None else drained)
            bes = [new if x.name == b.name else x for x in s.backends]
        return self.update_service(s.with_backends(bes))

    def delete_service(self, name: str) -> Service:
        with self.editing() as cfg:
            s = cfg.services.get(name)
            if s is None:
                raise NotFound(f"delete service {name} on {self.dev}", "no such service")
            self.maps["nat_in_dst"].delete(self._svc_key(s))
            self.maps["lb_svc"].update(s.index, self._SVC(base=0, size=0, seed=0))
            for b in s.backends:
                self.maps["lb_backends"].delete(b.id)
                self._forget_backend(b.id)
            del cfg.services[name]
            cfg.moved.pop(name, None)
        return s

    def service(self, name: str) -> Service:
        self.cfg = _read_config(self.dev, self.netns)
        s = self.cfg.services.get(name)
        if s is None:
            raise NotFound(f"service {name} on {self.dev}", "no such service")
        return s

    def services(self) -> list[Service]:
        return list(self.cfg.services.values())

    # ---- reading ------------------------------------------------------------------------------------

    def stats(self) -> dict:
        st = self.maps["nat_stats"]
        out = {name: int(sum(st.lookup(i) or [0])) for i, name in STAT_NAMES.items()}
        ct = self.maps["bg_ct"]
        live = sum(1 for _ in ct.keys())
        out.update(ct_entries=live, ct_capacity=ct.max_entries, ct_pressure=round(live / ct.max_entries, 4))
        return out

    def backend_flows(self) -> dict[tuple[str, str], int]:
        """(service, backend) -> the flows the load balancer gave it since it was added."""
        if "lb_flows" not in self.maps:
            return {}
        counts = {int(k.value if hasattr(k, "value") else k): int(sum(v)) for k, v in self.maps["lb_flows"].items()}
        return {(s.name, b.name): counts.get(b.id, 0) for s in self.cfg.services.values() for b in s.backends}

    def flows(self) -> list[dict]:
        """Translated flows (their original entries), both directions' counters."""
        out = []
        for k, v in self.maps["bg_ct"].lookup_batch():
            kb, vb = bytes(k), bytes(v)
            f = _decode_flow(kb, vb)
            if f is not None:
                out.append(f)
        return out

    def to_dict(self) -> dict:
        return {"interface": self.dev, "netns": self.netns, "rules": [r.to_dict() for r in self.cfg.rules.values()],
                "services": [s.to_dict() for s in self.cfg.services.values()]}


def _decode_flow(kb: bytes, vb: bytes) -> dict | None:
    KEY, VAL = contract.struct(OWNER, "bg_ct_key"), contract.struct(OWNER, "bg_ct_value")
    k, v = KEY.from_buffer_copy(kb), VAL.from_buffer_copy(vb)
    flags = v.ext.nat_flags
    if not flags or flags & NAT_VIEW:
        return None
    n = 4 if k.family == 4 else 16

    def a(b) -> str:
        return str(ipaddress.ip_address(bytes(b)[:n]))
    return {"family": k.family, "proto": {6: "tcp", 17: "udp"}.get(k.proto, k.proto), "src": a(k.src),
            "sport": k.sport, "dst": a(k.dst), "dport": k.dport,
            "side": "source" if flags & NAT_SRC else "destination", "to": a(v.ext.nat_addr),
            "to_port": v.ext.nat_port, "backend_id": v.ext.backend_id,
            "packets": [int(v.packets[0]), int(v.packets[1])], "bytes": [int(v.bytes[0]), int(v.bytes[1])]}


# ---- configuration on disk -------------------------------------------------------------------------------

def _config_path(dev: str, netns: str | None) -> str:
    return os.path.join(state_dir(dev, netns), "config.json")


def _write_config(dev: str, netns: str | None, cfg: Config) -> None:
    data = {"rules": [r.to_dict() for r in cfg.rules.values()],
            "services": [{**s.to_dict(), "index": s.index, "seed": s.seed,
                          "ids": {b.name: b.id for b in s.backends}} for s in cfg.services.values()],
            "next_backend": cfg.next_backend, "moved": {k: list(v) for k, v in cfg.moved.items()}}
    path = _config_path(dev, netns)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _read_config(dev: str, netns: str | None) -> Config:
    try:
        with open(_config_path(dev, netns)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return Config()
    except (OSError, ValueError) as e:
        raise BpfgateError(f"read NAT configuration of {dev}", str(e)) from None
    cfg = Config(next_backend=int(data.get("next_backend", 1)),
                 moved={k: (int(v[0]), int(v[1])) for k, v in data.get("moved", {}).items()})
    for d in data.get("rules", []):
        r = rule_from(d)
        cfg.rules[r.name] = r
    for d in data.get("services", []):
        ids, index, seed = d.pop("ids", {}), d.pop("index"), d.pop("seed")
        s = service_from(d)
        s = replace(s, index=index, seed=seed,
                    backends=tuple(replace(b, id=ids.get(b.name, 0)) for b in s.backends))
        cfg.services[s.name] = s
    return cfg


def running(netns: str | None = None) -> list[str]:
    """Interfaces of `netns` with a NAT attached by bpfgate."""
    root = os.path.join(pins.PIN_ROOT, OWNER, _ns(netns))
    try:
        return sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "nat_stats")))
    except FileNotFoundError:
        return []



