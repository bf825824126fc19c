"""The drop-port gate: TCP to the destination ports in a BPF hash map is dropped at a TC hook.

The port list is a map, so blocking and unblocking are map writes: live, no reload, no recompile. The map
is pinned (/sys/fs/bpf/bpfgate/gate/<netns>/<dev>/<direction>/blocked_ports) so another process (the CLI)
can edit a running gate, and it goes away with `bpfgate detach`. (The policy engine grows from this data
plane: bpf/gate.bpf.c.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bpfgate import attach
from bpfgate.errors import BpfgateError
from bpfgate.kernel import pins
from bpfgate.kernel.maps import Map
from bpfgate.kernel.objects import BpfObject

PROG = "bg_gate_ports"


@dataclass(frozen=True)
class PortCounter:
    port: int
    packets: int
    bytes: int


def pin_dir(dev: str, direction: str, netns_name: str | None) -> str:
    return pins.pin_path("gate", netns_name or "-", dev, direction)


def _check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise BpfgateError("block port", f"{port!r} is not a TCP port (1-65535)")
    return port


class PortGate:
    """A running drop-port gate on one interface hook. Use attach() to start one, open() to edit one."""

    def __init__(self, ports: Map, attachment: attach.Attachment | None, obj: BpfObject | None = None):
        self.ports = ports
        self.attachment = attachment
        self._obj = obj

    @classmethod
    def attach(cls, dev: str, *, direction: str = "ingress", netns_name: str | None = None,
               method: str = "tc") -> "PortGate":
        obj = BpfObject.open("gate").load()
        ports = obj.map("blocked_ports")
        path = os.path.join(pin_dir(dev, direction, netns_name), "blocked_ports")
        pins.unpin(path)  # a stale pin from a previous gate on this hook would shadow ours
        ports.pin(path)
        try:
            att = attach.attach_tc(obj.program(PROG), dev, direction, netns_name=netns_name, method=method,
                                   owner="gate", extra_pins=[path])
        except BaseException:
            pins.unpin(path)
            pins.prune_empty(os.path.dirname(path))
            obj.close()
            raise
        return cls(ports, att, obj)

    @classmethod
    def open(cls, dev: str, *, direction: str = "ingress", netns_name: str | None = None) -> "PortGate":
        """Edit the gate another process attached (through its pinned map)."""
        path = os.path.join(pin_dir(dev, direction, netns_name), "blocked_ports")
        if not os.path.exists(path):
            raise BpfgateError(f"open gate on {dev} {direction}", "no bpfgate gate is attached there")
        with BpfObject.open("gate") as obj:  # only for the BTF types of the map
            btf = obj.btf
            ports = Map.from_pin(path, btf.struct("bg_port_key"), btf.struct("bg_counter"))
        return cls(ports, None)

    def block(self, port: int) -> None:
        key = {"port": _check_port(port)}
        if key not in self.ports:
            self.ports[key] = (0, 0)

    def unblock(self, port: int) -> bool:
        return self.ports.delete({"port": _check_port(port)})

    def blocked(self) -> list[int]:
        return sorted(k.port for k in self.ports.keys())

    def counters(self) -> list[PortCounter]:
        out = []
        for k, per_cpu in self.ports.items():
            out.append(PortCounter(k.port, sum(v.packets for v in per_cpu), sum(v.bytes for v in per_cpu)))
        return sorted(out, key=lambda c: c.port)

    def detach(self) -> list[str]:
        done = attach.detach(self.attachment) if self.attachment else []
        self.close()
        return done

    def close(self) -> None:
        if self._obj is not None:
            self._obj.close()
            self._obj = None
