"""The `bpfgate` command's C front end (frontend/bpfgate.c) against an agent's socket that answers as scripted:
for every kind of answer it prints, byte for byte, and exits as the Python client (cli/entry.py) does with
the same answer, sends the same request, never sends one twice, and leaves everything else to the Python
CLI beside it (with the same arguments)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

PY_CLI = "echo \"python-cli $*\"; exit 7"   # the Python CLI beside the front end, in these tests
EDIT = ["rule", "add", "--dev", "veth0", "--proto", "tcp", "--dport", "8081", "--action", "drop", "no-8081"]


class ScriptedAgent:
    """A unix socket where an agent's would be, answering each request line with `reply` (bytes), or
    holding the connection (`hold` seconds, or until `release` is set) and closing it without a word."""

    def __init__(self, root: str, ns: str = "host"):
        self.path = os.path.join(root, ns, "agent.sock")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.reply: bytes | None = None
        self.hold = 0.0
        self.release = threading.Event()
        self.requests: list[dict] = []
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def answer(self, obj) -> None:
        self.reply = (json.dumps(obj) + "\n").encode()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                line = conn.makefile("rb").readline()
                self.requests.append(json.loads(line) if line else None)
                if self.reply is None:
                    self.release.wait(self.hold)
                else:
                    conn.sendall(self.reply)

    def close(self) -> None:
        self._stop = True
        self._t.join(timeout=5)
        self.sock.close()


@pytest.fixture
def agent(tmp_path):
    a = ScriptedAgent(str(tmp_path / "agents"))
    yield a
    a.close()


def env_for(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "BPFGATE_AGENT_WAIT")}
    return {**env, "BPFGATE_AGENT_DIR": str(tmp_path / "agents"), **extra}


def run(cmd: list[str], env: dict) -> tuple[int, str, str]:
    r = subprocess.run(cmd, capture_output=True, env=env, timeout=60, check=False)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def python_client(args: list[str], env: dict) -> tuple[int, str, str]:
    """What the Python CLI's entry point prints and exits with for `args` (cli/entry.py)."""
    return run([sys.executable, "-c", "import sys; from bpfgate.cli.entry import run; run(sys.argv[1:])", *args], env)


def calls(path: str) -> list[str]:
    return open(path, "rb").read().splitlines()


@pytest.mark.parametrize("reply", [
    {"ok": True, "result": {"stdout": "OK   rule no-8081 added \u00e9\u2713 \U0001f600\n", "stderr": "", "code": 0}},
    {"ok": True, "result": {"stdout": "", "stderr": "bpfgate: error: policy rule bad.src: no\n", "code": 2}},
    {"ok": True, "result": {"stdout": "{\"deleted\": \"x\"}\n", "stderr": "warn\n", "code": 300}},
    {"ok": False, "error": {"type": "PermissionDenied", "op": "add_rule in the bpfgate agent", "cause": "no",
                            "hint": "run as root", "message": "add_rule in the bpfgate agent: no\n  more  \n\n(run as root)",
                            "exit_code": 4, "fields": {}}},
    {"ok": False, "error": {"type": "BpfgateError", "op": "agent request", "cause": "bad request: not JSON"}},
    {"ok": False, "error": {"type": "NotSupported", "op": "x", "cause": "y", "hint": None, "exit_code": 3}},
    ["not", "an", "object"],
], ids=["printed", "bad-rule", "both-streams", "error-message", "error-no-message", "error-no-hint", "not-object"])
def test_answers_print_as_the_python_client_prints_them(frontend, agent, tmp_path, reply):
    binary, made = frontend(PY_CLI)
    env = env_for(tmp_path)
    agent.answer(reply)
    fast = run([binary, *EDIT], env)
    assert calls(made) == [], "the front end started Python"
    assert fast == python_client(EDIT, env)
    assert len(agent.requests) == 2 and agent.requests[0] == agent.requests[1]


def test_request_is_the_python_clients(frontend, agent, tmp_path):
    """The request: the command line as typed (any text), whether stdout and stderr are terminals and in
    colour (FORCE_COLOR, NO_COLOR, TERM=dumb as Rich reads them): the same the Python client sends."""
    binary, made = frontend(PY_CLI)
    agent.answer({"ok": True, "result": {"stdout": "", "stderr": "", "code": 0}})
    args = ["set", "add", "ports", "8081", "qu\"ote", "back\\slash", "new\nline", "tab\t", "\u00e9\u2713\U0001f600",
            "\x01", ""]
    for extra in ({}, {"FORCE_COLOR": "1"}, {"NO_COLOR": "1"}, {"TERM": "dumb"}):
        env = env_for(tmp_path, **extra)
        assert run([binary, *args], env) == python_client(args, env) == (0, "", "")
        fast, slow = agent.requests[-2:]
        assert fast == slow and fast["argv"] == args and fast["op"] == "cli"
    assert [r["colour"] for r in agent.requests[::2]] == [[False, False], [True, True], [False, False], [False, False]]
    assert calls(made) == []


def test_the_namespace_picks_the_socket(frontend, tmp_path):
    """--netns NAME and --netns=NAME: that namespace's agent; none: the host's (which is not asked)."""
    binary, made = frontend(PY_CLI)
    ns = ScriptedAgent(str(tmp_path / "agents"), "bg-ns1")
    host = ScriptedAgent(str(tmp_path / "agents"))
    try:
        ns.answer({"ok": True, "result": {"stdout": "ns\n", "stderr": "", "code": 0}})
        host.answer({"ok": True, "result": {"stdout": "host\n", "stderr": "", "code": 0}})
        env = env_for(tmp_path)
        assert run([binary, *EDIT, "--netns", "bg-ns1"], env) == (0, "ns\n", "")
        assert run([binary, "rule", "del", "--netns=bg-ns1", "x"], env) == (0, "ns\n", "")
        assert run([binary, "rule", "del", "x"], env) == (0, "host\n", "")
        assert [len(ns.requests), len(host.requests)] == [2, 1] and calls(made) == []
    finally:
        ns.close()
        host.close()


@pytest.mark.parametrize("args", [
    ["status"], ["rule", "list"], ["rule"], [], ["apply", "p.yaml"], [*EDIT, "--help"], [*EDIT, "-h"],
    ["rule", "del", "--", "x"], [*EDIT, "--netns"], [*EDIT, "--netns", "--json"], [*EDIT, "--netns="],
    [*EDIT, "--netns", "a/b"], [*EDIT, "--netns", ".."], ["rule", "add", "x\udcff"],
], ids=["status", "list", "short", "none", "apply", "help", "h", "dashdash", "netns-missing", "netns-option",
        "netns-empty", "netns-slash", "netns-dotdot", "not-utf8"])
def test_anything_else_runs_the_python_cli(frontend, agent, tmp_path, args):
    """Other commands and forms the front end is not sure of: the Python CLI, same arguments, its output and
    exit code; the agent is not asked."""
    binary, made = frontend(PY_CLI)
    agent.answer({"ok": True, "result": {"stdout": "agent\n", "stderr": "", "code": 0}})
    raw = [a.encode("utf-8", "surrogateescape") for a in args]
    r = subprocess.run([binary.encode(), *raw], capture_output=True, env=env_for(tmp_path), timeout=60, check=False)
    assert (r.returncode, r.stdout) == (7, b"python-cli " + b" ".join(raw) + b"\n")
    assert agent.requests == [] and len(calls(made)) == 1


def test_no_agent_runs_the_python_cli(frontend, tmp_path):
    """No socket, or one nobody listens on (a killed agent's), or a wait that is no number: the Python CLI."""
    binary, made = frontend(PY_CLI)
    env = env_for(tmp_path)
    assert run([binary, *EDIT], env) == (7, "python-cli " + " ".join(EDIT) + "\n", "")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.makedirs(tmp_path / "agents" / "host")
    stale.bind(str(tmp_path / "agents" / "host" / "agent.sock"))
    stale.close()
    assert run([binary, *EDIT], env)[0] == 7
    assert run([binary, *EDIT], {**env, "BPFGATE_AGENT_WAIT": "soon"})[0] == 7
    assert len(calls(made)) == 3


def test_an_answer_left_to_the_caller_runs_the_python_cli(frontend, agent, tmp_path):
    """The agent answers "not mine" (result null: another namespace's edit, nothing done): the Python CLI."""
    binary, made = frontend(PY_CLI)
    agent.answer({"ok": True, "result": None})
    assert run([binary, *EDIT], env_for(tmp_path))[0] == 7
    assert len(agent.requests) == 1 and len(calls(made)) == 1


def test_an_agent_that_does_not_answer_is_an_error_not_a_retry(frontend, agent, tmp_path):
    """Sent, then no answer in BPFGATE_AGENT_WAIT, or the connection closed: the Python client's error and exit
    code; the request is not sent again (the Python CLI is not run: it would send it again)."""
    binary, made = frontend(PY_CLI)
    env = env_for(tmp_path, BPFGATE_AGENT_WAIT="0.3")
    agent.hold = 30
    t0 = time.monotonic()
    fast = run([binary, *EDIT], env)
    assert time.monotonic() - t0 < 5
    assert fast == python_client(EDIT, env)   # its request waits in the socket's queue meanwhile
    assert fast[0] == 1 and "no answer in 0.3 s: the agent is busy" in fast[2], fast
    agent.release.set()   # from now on: closed without a reply
    deadline = time.monotonic() + 10
    while len(agent.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    fast = run([binary, *EDIT], env)
    assert fast == python_client(EDIT, env)
    assert "the agent did not answer: it closed the connection without a reply" in fast[2], fast
    assert len(agent.requests) == 4 and calls(made) == []


def test_install_needs_the_python_cli_beside_it(tmp_path, frontend_binary):
    """`make install BINDIR=DIR` refuses a DIR without pip's `bpfgate-py`; with it, installs and is idempotent."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "frontend")
    build = os.path.dirname(frontend_binary)
    r = subprocess.run(["make", "-s", "-C", src, f"BUILD={build}", "install", f"BINDIR={tmp_path}"],
                       capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "bpfgate-py" in r.stderr and not (tmp_path / "bpfgate").exists()
    (tmp_path / "bpfgate-py").write_text("#!/bin/sh\n")
    (tmp_path / "bpfgate-py").chmod(0o755)
    for _ in range(2):
        subprocess.run(["make", "-s", "-C", src, f"BUILD={build}", "install", f"BINDIR={tmp_path}"],
                       check=True)
        assert open(tmp_path / "bpfgate", "rb").read() == open(frontend_binary, "rb").read()


def test_the_front_end_sends_what_the_agent_runs():
    """frontend/bpfgate.c's table of edit commands is client.CLI_EDITS (the commands the agent runs for a
    client, by their first two words, and the operation each names in errors)."""
    import re

    from bpfgate.agent.client import CLI_EDITS

    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "frontend",
                       "bpfgate.c")
    table = re.search(r"EDITS\[\]\[3\] = \{(.*?)\};", open(src).read(), re.S).group(1)
    rows = re.findall(r'\{"([^"]+)", "([^"]+)", "([^"]+)"\}', table)
    assert {(a, b): op for a, b, op in rows} == CLI_EDITS and len(rows) == len(CLI_EDITS)
