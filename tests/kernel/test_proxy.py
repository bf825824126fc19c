"""The kernel splice proxy (`bpfgate proxy`: sk_skb stream parser + verdict on a sockhash): clients of the
test talk through it to the test's own backend on loopback; every byte arrives, in order, both ways, for
sizes 1 B .. 1 MiB, through the client's half-close and the backend's close (its last bytes coming with its
FIN), bytes waiting before a socket joins (a backend that speaks first), 16 clients at once; the user-space
relay (the fallback when the kernel path fails its self-test) does the same; bad addresses are refused with
nothing left behind."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading

import pytest
from clirun import run_cli

from bpfgate import attach
from bpfgate import proxy as proxy_lib
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

TAIL = 1000   # bytes the backend sends after the client's half-close, before it closes


def tail_of(data: bytes) -> bytes:
    return bytes(random.Random(len(data)).randbytes(TAIL))


def _serving(srv: socket.socket, serve):
    """The listening socket's port while each connection it accepts is served by serve(conn) in a thread."""

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


@pytest.fixture
def backend():
    """Echoes what a client sends; after the client's half-close, sends tail_of(what it got) and closes."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve(c):
        got = bytearray()
        while b := c.recv(1 << 16):
            got += b
            c.sendall(b)
        c.sendall(tail_of(bytes(got)))
        c.close()

    yield from _serving(srv, serve)


@pytest.fixture
def banner_backend():
    """Speaks first (BANNER, at once on accept), then echoes the request reversed after its end, closes."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve(c):
        c.sendall(BANNER)
        got = bytearray()
        while b := c.recv(1 << 16):
            got += b
        c.sendall(bytes(reversed(got)))
        c.close()

    yield from _serving(srv, serve)


BANNER = bytes(random.Random(1).randbytes(300_000))   # more than a receive window: it waits before the join


@pytest.fixture
def proxy(request):
    """`bpfgate proxy` to a backend fixture in a mode, both named by the test's parameter (by default
    ("backend", "kernel"))."""
    backend_fixture, mode = getattr(request, "param", ("backend", "kernel"))
    refused = proxy_lib.kernel_path_refused()
    if mode == "kernel" and refused:
        pytest.skip(f"proxy --mode kernel is refused here: {refused}")
    port = request.getfixturevalue(backend_fixture)
    p = subprocess.Popen([sys.executable, "-m", "bpfgate", "proxy", "--listen", "127.0.0.1:0",
                          "--to", f"127.0.0.1:{port}", "--mode", mode, "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line, p.stderr.read()
    ready = json.loads(line)
    assert ready["path"] == ("relay" if mode == "relay" or (mode == "auto" and refused) else "kernel"), ready
    state = {"port": int(ready["listen"].rsplit(":", 1)[1]), "process": p}
    yield state
    if p.poll() is None:
        p.terminate()
    out, err = p.communicate(timeout=scaled(20))
    state["summary"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    assert p.returncode == 128 + 15, err   # stopped by SIGTERM, cleanly
    assert not attach.find(owner="proxy", any_netns=True)


def exchange(port: int, data: bytes) -> str | None:
    """Send `data` through the proxy, half-close, read to the end; None when all came back as it should."""
    c = socket.create_connection(("127.0.0.1", port), timeout=scaled(30))
    got = bytearray()

    def read():
        while b := c.recv(1 << 20):
            got.extend(b)

    t = threading.Thread(target=read)
    t.start()
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    t.join(scaled(30))
    c.close()
    want = data + tail_of(data)
    if bytes(got) == want:
        return None
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return f"{len(data)} B: got {len(got)} of {len(want)} bytes, first difference at {same}"


def stop(proxy) -> dict:
    proxy["process"].terminate()
    out, _ = proxy["process"].communicate(timeout=scaled(20))
    proxy["process"].communicate = lambda timeout=None: (out, "")
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.smoke
def test_a_client_gets_every_byte_back_through_half_close_and_close(proxy):
    for size in (1, 1000, 1 << 20):
        assert exchange(proxy["port"], random.randbytes(size)) is None
    s = stop(proxy)
    assert s["spliced"] + s["relayed"] == 3 and s["spliced"] >= 1 and s["stalled"] == 0, s


def many_clients(port: int, clients: int, sizes: list[int]) -> list[str]:
    errors: list[str] = []

    def client(i):
        for n in random.Random(i).sample(sizes, len(sizes)):
            e = exchange(port, random.randbytes(n))
            if e:
                errors.append(f"client {i}: {e}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


SIZES = [1, 2, 100, 1448, 65536, 100_001, 1 << 20]


def test_sixteen_clients_at_once_many_sizes(proxy):
    assert many_clients(proxy["port"], 16, SIZES) == []
    s = stop(proxy)
    # a client that ended its stream before the proxy accepted it cannot join (the kernel takes established
    # sockets only): relayed; a 1 MiB one cannot have (its end comes after more than a window of bytes)
    assert s["spliced"] + s["relayed"] == 16 * len(SIZES) and s["spliced"] >= 16 and s["stalled"] == 0, s


@pytest.mark.parametrize("proxy", [("banner_backend", "kernel")], indirect=True)
def test_a_backend_that_speaks_first(proxy):
    """The banner reaches the proxy's backend socket before it joins the sockhash (more than a window of
    it), and the reply comes after the client's half-close with the backend's FIN."""
    def client(i, errors):
        c = socket.create_connection(("127.0.0.1", proxy["port"]), timeout=scaled(30))
        got = bytearray()
        while len(got) < len(BANNER) and (b := c.recv(1 << 20)):
            got += b
        request = random.randbytes(1000 + i * 5000)
        c.sendall(request)
        c.shutdown(socket.SHUT_WR)
        while b := c.recv(1 << 20):
            got += b
        c.close()
        if bytes(got) != BANNER + bytes(reversed(request)):
            errors.append(f"client {i}: {len(got)} of {len(BANNER) + len(request)} bytes")

    errors: list[str] = []
    threads = [threading.Thread(target=client, args=(i, errors)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stop(proxy) == {"spliced": 8, "relayed": 0, "stalled": 0}


@pytest.mark.parametrize("proxy", [("backend", "relay")], indirect=True)
def test_the_user_space_relay_fallback(proxy):
    assert many_clients(proxy["port"], 16, [1, 1448, 100_001, 1 << 20]) == []
    assert stop(proxy) == {"spliced": 0, "relayed": 64, "stalled": 0}


@pytest.mark.parametrize("proxy", [("backend", "auto")], indirect=True)
def test_auto_mode_takes_the_kernel_path_or_relays_where_it_is_refused(proxy):
    for size in (1, 1 << 20):
        assert exchange(proxy["port"], random.randbytes(size)) is None
    s = stop(proxy)
    assert s["spliced"] + s["relayed"] == 2 and s["stalled"] == 0, s
    if proxy_lib.kernel_path_refused():
        assert s["relayed"] == 2, s
    else:   # a 1 B client may end its stream before it is accepted (relayed then); 1 MiB cannot have
        assert s["spliced"] >= 1, s


def test_kernel_mode_is_refused_in_one_line_where_the_kernel_path_is_not_tried(backend):
    why = proxy_lib.kernel_path_refused()
    if why is None:
        pytest.skip("this kernel's splice path is tried (its self-test decides)")
    r = run_cli(["proxy", "--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{backend}", "--mode", "kernel"])
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines() == [f"bpfgate: error: kernel splice proxy: {why} (needs Linux >= 6.1)"]
    assert not attach.find(owner="proxy", any_netns=True)


def test_bad_addresses_are_refused():
    for args, words in ((["--listen", "nonsense", "--to", "127.0.0.1:80"], "ADDRESS:PORT"),
                        (["--listen", "127.0.0.1:0", "--to", "127.0.0.1:0"], "port out of range"),
                        (["--listen", "127.0.0.1:0", "--to", "127.0.0.1:70000"], "port out of range"),
                        (["--listen", "198.18.255.254:0", "--to", "127.0.0.1:80"], "Cannot assign")):
        r = run_cli(["proxy", *args])
        assert r.returncode != 0 and "Traceback" not in r.stderr and words in r.stderr, r.stderr
    assert not attach.find(owner="proxy", any_netns=True)
