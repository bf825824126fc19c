"""sockmap acceleration of local TCP (sock_ops + sk_msg) on the test's own child cgroup: data byte-exact in
both directions for message sizes 1 B .. 1 MiB over many concurrent connections, through half-close and
close, and proven to have gone through the sockhash (the program's counters); a connection not opted in
(another port, or a process outside the cgroup) is untouched; removing it mid-stream loses nothing and the
connection carries on; `bpfgate detach` leaves nothing. Skipped with the self-test's reason on a kernel
that fails it (the reason `bpfgate accel` would refuse with)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from clirun import run_cli

from bpfgate import accel, attach
from bpfgate.errors import BpfgateError, NotSupported
from bpfgate.kernel.maps import Map
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

SIZES = [1, 2, 3, 100, 1448, 4096, 65535, 65536, 70_001, 1 << 20]

# A child: moves into the cgroup (if given), listens, opens `conns` connections to itself and, on each at
# once, sends every size both ways (random bytes, checked), half-closes each way, closes; prints totals.
PAIRS = """
import hashlib, json, os, random, socket, sys, threading
{join}
SIZES = {sizes}
ls = socket.create_server(("{addr}", {port}), family={family})
port = ls.getsockname()[1]
errors = []

def pump(tx, rx, data, tag):
    got = bytearray()
    t = threading.Thread(target=tx.sendall, args=(data,))
    t.start()
    while len(got) < len(data):
        b = rx.recv(1 << 20)
        if not b:
            break
        got += b
    t.join()
    if bytes(got) != data:
        errors.append(f"{{tag}}: {{len(got)}} of {{len(data)}} bytes, equal prefix {{bytes(got) == data[:len(got)]}}")

# connections made one by one (each accepted before the next), then all run at once
socks = []
for i in range({conns}):
    c = socket.create_connection(("{addr}", port), timeout=30)
    s, _ = ls.accept()
    s.settimeout(30)
    socks.append((c, s))

def run(i):
    c, s = socks[i]
    rnd = random.Random(i)
    try:
        for n in SIZES:
            pump(c, s, rnd.randbytes(n), f"conn {{i}} {{n}} B to server")
            pump(s, c, rnd.randbytes(n), f"conn {{i}} {{n}} B to client")
        c.shutdown(socket.SHUT_WR)
        if s.recv(1) != b"":
            errors.append(f"conn {{i}}: no end of stream after the client's half-close")
        pump(s, c, rnd.randbytes(300_000), f"conn {{i}} after half-close")
        s.close()
        if c.recv(1) != b"":
            errors.append(f"conn {{i}}: no end of stream after close")
        c.close()
    except OSError as e:
        errors.append(f"conn {{i}}: {{e}}")

threads = [threading.Thread(target=run, args=(i,)) for i in range({conns})]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({{"port": port, "errors": errors}}))
"""


def join_code(cgroup: str | None) -> str:
    return f"open({os.path.join(cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))" if cgroup else ""


def run_pairs(cgroup: str | None, port: int, *, conns: int = 4, sizes=SIZES, v6: bool = False) -> dict:
    code = PAIRS.format(join=join_code(cgroup), sizes=list(sizes), port=port, conns=conns,
                        addr="::1" if v6 else "127.0.0.1", family="socket.AF_INET6" if v6 else "socket.AF_INET")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(120))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["errors"] == []
    return out


def bytes_of(conns: int, sizes=SIZES) -> int:
    return conns * (2 * sum(sizes) + 300_000)


@pytest.fixture
def accel_ok():
    from bpfgate import doctor

    for name in ("sockops", "sk_msg", "accel"):   # doctor's reason where the kernel lacks a piece
        c = doctor.check(name)
        if c.status != "ok":
            pytest.skip(f"doctor {name}: {c.detail}")
    try:
        accel.selftest()
    except NotSupported as e:
        pytest.skip(str(e))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.smoke
def test_accelerated_connections_are_byte_exact_both_ways_through_half_close(accel_ok, cgroup):
    port = free_port()
    r = run_cli(["accel", cgroup, "--port", str(port)])
    assert r.returncode == 0, r.stderr
    run_pairs(cgroup, port, conns=1)   # the smoke set's budget (~2 min under TCG): more connections below
    t = accel.totals(cgroup)
    assert t.sockets == 2 and t.add_failed == 0
    assert t.redirected_bytes == bytes_of(1)   # every byte went through the sockhash
    r = run_cli(["detach", "--cgroup", cgroup])
    assert r.returncode == 0, r.stderr
    assert not attach.find(target=cgroup, any_netns=True) and not attach.find(owner="accel", any_netns=True)
    assert not os.path.exists(accel.pin_dir(cgroup))


def test_many_concurrent_connections(accel_ok, cgroup):
    port = free_port()
    accel.enable(cgroup, ports=[port])
    sizes = [1, 1448, 65537, 300_000]
    run_pairs(cgroup, port, conns=16, sizes=sizes)
    t = accel.totals(cgroup)
    assert t.sockets == 32 and t.redirected_bytes == bytes_of(16, sizes)


def test_ipv6_and_every_port(accel_ok, cgroup):
    accel.enable(cgroup, all_ports=True)
    sizes = [1, 1000, 100_000]
    run_pairs(cgroup, 0, conns=2, sizes=sizes, v6=True)
    t = accel.totals(cgroup)
    assert t.sockets == 4 and t.redirected_bytes == bytes_of(2, sizes)


def test_connections_not_opted_in_are_untouched(accel_ok, cgroup):
    port, other = free_port(), free_port()
    accel.enable(cgroup, ports=[port])
    sizes = [1, 1000, 100_000]
    run_pairs(cgroup, other, conns=2, sizes=sizes)   # in the cgroup, another port
    run_pairs(None, port, conns=2, sizes=sizes)      # the opted-in port, a process outside the cgroup
    t = accel.totals(cgroup)
    assert t.sockets == 0 and t.redirected == 0 and t.passed == 0   # the message program never ran on them


# A child in the cgroup: one connection, a sender streaming numbered blocks and an active reader checking
# them; it says "ready" once data flows, and stops after "stop" on stdin (then closes and reports).
STREAM = """
import json, os, socket, struct, sys, threading
{join}
ls = socket.create_server(("127.0.0.1", {port}))
c = socket.create_connection(ls.getsockname(), timeout=30)
s, _ = ls.accept()
s.settimeout(30)
stop = threading.Event()
sent = [0]
def send():
    i = 0
    while not stop.is_set():
        c.sendall(struct.pack("!Q", i) * 512)   # 4 KiB blocks, each its index 512 times
        i += 1
    sent[0] = i
    c.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
buf, blocks, bad = bytearray(), 0, []
said = False
while True:
    b = s.recv(1 << 16)
    if not b:
        break
    buf += b
    while len(buf) >= 4096:
        if bytes(buf[:4096]) != struct.pack("!Q", blocks) * 512 and not bad:
            bad.append(blocks)
        del buf[:4096]
        blocks += 1
    if blocks > 200 and not said:
        print("ready", flush=True)
        said = True
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set())).start()
t.join()
print(json.dumps({{"sent": sent[0], "received": blocks, "left": len(buf), "bad": bad}}), flush=True)
"""


def test_removal_mid_stream_loses_nothing_and_the_connection_carries_on(accel_ok, cgroup):
    port = free_port()
    accel.enable(cgroup, ports=[port])
    m = Map.from_pin(os.path.join(accel.pin_dir(cgroup), "bg_accel_socks"))
    socks_id = m.info().id
    m.close()
    p = subprocess.Popen([sys.executable, "-c", STREAM.format(join=join_code(cgroup), port=port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        moved = accel.totals(cgroup).redirected_bytes
        assert moved > 0
        r = run_cli(["detach", "--cgroup", cgroup])
        assert r.returncode == 0, r.stderr
        p.stdin.write("stop\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=scaled(60))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["bad"] == [] and res["left"] == 0 and res["received"] == res["sent"], res
    assert res["sent"] * 4096 > moved   # data kept flowing after the removal
    assert gone(socks_id)   # the sockhash is gone (the kernel frees it a moment later): nothing left behind


def gone(map_id: int) -> bool:
    deadline = time.monotonic() + scaled(10)
    while time.monotonic() < deadline:
        try:
            Map.from_id(map_id).close()
        except BpfgateError:
            return True
        time.sleep(0.1)
    return False


def test_bad_input_is_refused_with_nothing_attached(cgroup):
    for args, words in ((["--port", "0"], "port 0"), ([], "no port given"),
                        (["--port", "80", "--all-ports"], "together")):
        r = run_cli(["accel", cgroup, *args])
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr   # bad input
    r = run_cli(["accel", cgroup + "-missing", "--port", "80"])
    assert r.returncode == 2 and "no such cgroup" in r.stderr
    assert not attach.find(owner="accel", any_netns=True)
