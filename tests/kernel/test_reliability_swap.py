"""Whole-policy swaps under load: an allowed flow keeps flowing and a denied one stays denied while
`policyctl.apply` swaps the server's tc-ingress policy back and forth 1000 times (real UDP datagrams with
sequence numbers, real TCP requests, default deny with conntrack: a packet that met half a policy would
be dropped). Loss is compared with a control run of the same stream without swaps.
BG_SWAPS sets the number of swaps (default 1000)."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

from bpfgate import policyctl
from bpfgate.policy.model import Hook, Policy
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
SWAPS = int(os.environ.get("BG_SWAPS", "1000"))
ALLOWED, DENIED, WEB = 7000, 7001, 8080   # the `web` fixture serves 8080
GAP = 0.0005          # seconds between datagrams of each flow: ~2k/s, far below what a veth loses


def policy(dev: str, variant: int) -> Policy:
    """Two different policies that agree on the flows under test: the rules around them differ (order,
    shapes, names) so every apply is a real swap of every map."""
    common = [{"name": "replies", "ct": "established", "action": "pass"},
              {"name": "udp-allowed", "protocol": "udp", "dst_port": ALLOWED, "action": "pass"},
              {"name": "web", "protocol": "tcp", "dst_port": WEB, "action": "pass"},
              {"name": "udp-denied", "protocol": "udp", "dst_port": DENIED, "action": "drop"}]
    extra = [{"name": "a-ssh", "protocol": "tcp", "dst_port": 22, "src": "198.18.200.0/24", "action": "pass"},
             {"name": "a-dns", "protocol": "udp", "dst_port": [53, "5000-5100"], "action": "pass"}]
    if variant:
        extra = [{"name": "b-icmp", "protocol": "icmp", "action": "pass"},
                 {"name": "b-v6", "src": "fd00:99::/48", "protocol": "tcp", "dst_port": "9000-9100",
                  "action": "pass"}]
        common = [common[3], common[0], common[2], common[1]]
    return Policy.model_validate({"interfaces": [dev], "hooks": {"tc-ingress": {
        "default": "deny", "rules": extra + common if variant else common + extra}}})


class Stream:
    """Numbered UDP datagrams from the client to one server port, received and counted in the server."""

    def __init__(self, client, server, addr: str, port: int):
        with server.entered():
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.rx.bind((addr, port))
        self.rx.settimeout(0.05)
        with client.entered():
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.dst, self.sent, self.seen = (addr, port), 0, set()
        self._rx_thread = threading.Thread(target=self._receive, daemon=True)
        self._stop = threading.Event()
        self._rx_thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen.add(struct.unpack("!Q", self.rx.recv(64)[:8])[0])
            except socket.timeout:
                continue

    def send(self) -> None:
        self.tx.sendto(struct.pack("!Q", self.sent), self.dst)
        self.sent += 1

    def close(self) -> int:
        """Stops receiving (after a grace period for datagrams in flight); returns the number lost."""
        time.sleep(scaled(0.3))
        self._stop.set()
        self._rx_thread.join()
        self.rx.close()
        self.tx.close()
        return self.sent - len(self.seen)


def run_traffic(n, stop: threading.Event, min_datagrams: int) -> dict:
    """Both UDP flows and one TCP request per 20 datagrams until `stop` (and at least min_datagrams)."""
    allowed, denied = Stream(n.client, n.server, n.ip4, ALLOWED), Stream(n.client, n.server, n.ip4, DENIED)
    requests = failed = 0
    try:
        while not stop.is_set() or allowed.sent < min_datagrams:
            allowed.send()
            denied.send()
            if allowed.sent % 20 == 0:
                requests += 1
                failed += not n.client.http_get(f"http://{n.ip4}:{WEB}/", timeout=scaled(2.0)).ok
            time.sleep(GAP)
            if allowed.sent > 2_000_000:
                break   # bounded whatever happens to `stop`
    finally:
        lost, denied_lost = allowed.close(), denied.close()
    return {"sent": allowed.sent, "lost": lost, "denied_passed": denied.sent - denied_lost,
            "requests": requests, "failed": failed}


def test_swaps_under_load_lose_nothing_and_let_nothing_denied_through(web):
    n = web
    policyctl.apply(policy(n.dev, 0), netns=n.ns)
    assert n.client.http_get(f"http://{n.ip4}:{WEB}/").ok

    # control: the same stream, no swaps
    stop = threading.Event()
    timer = threading.Timer(scaled(2.0), stop.set)
    timer.start()
    control = run_traffic(n, stop, 0)
    timer.cancel()

    # the same stream while the policy swaps SWAPS times
    stop = threading.Event()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(run_traffic(n, stop, control["sent"])))
    t.start()
    swapped, t0 = 0, time.monotonic()
    try:
        for i in range(SWAPS):
            r = policyctl.apply(policy(n.dev, (i + 1) % 2), netns=n.ns, start_watcher=False)
            swapped += bool(r.applied)
    finally:
        stop.set()
        t.join()
    took = time.monotonic() - t0
    print(f"\n{swapped} swaps in {took:.1f} s ({took / max(swapped, 1) * 1e3:.1f} ms each); "
          f"control {control}; under swaps {result}")
    assert swapped == SWAPS
    assert result["sent"] >= control["sent"]
    assert result["denied_passed"] == 0 and control["denied_passed"] == 0
    assert result["failed"] == 0 and result["requests"] > 0
    # loss beyond the control run's rate (0 on a veth at this rate) is loss the swaps caused
    allowed_loss = control["lost"] * result["sent"] / max(control["sent"], 1)
    assert result["lost"] <= allowed_loss, (result, control)
    # the policy in force is the last one applied, whole
    assert policyctl.running(n.ns)[(n.dev, Hook.TC_INGRESS)] == policy(n.dev, SWAPS % 2).hooks[Hook.TC_INGRESS]
