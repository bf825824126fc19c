"""The agent's socket without a kernel: a request waits for the round in progress a bounded time and
then fails clearly; errors keep their type; a socket nobody listens on means no agent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bpfgate.agent import client
from bpfgate.agent.api import Api
from bpfgate.agent.daemon import Agent
from bpfgate.errors import BpfgateError, NotFound


@pytest.fixture
def api(tmp_path, monkeypatch):
    monkeypatch.setenv(client.DIR_ENV, str(tmp_path / "state"))
    monkeypatch.setattr(client, "WAIT_S", 0.5)
    agent = Agent(str(tmp_path), netns="bgunit")
    os.makedirs(agent.dir, mode=0o700)
    a = Api(agent)
    a.serve()
    yield agent, a
    a.close()


def test_ping_names_the_agent(api):
    agent, _ = api
    assert client.running("bgunit") == {"pid": os.getpid(), "policy_dir": agent.policy_dir}
    assert client.running("bgother") is None


def test_a_busy_agent_answers_within_the_wait_or_says_it_is_busy(api):
    agent, _ = api
    agent.busy.acquire()   # a round in progress
    try:
        with pytest.raises(BpfgateError, match="busy|still reconciling"):
            client.call("bgunit", "delete_rule", dev="eth0", hook="tc-ingress", name="x")
    finally:
        agent.busy.release()


def test_errors_keep_their_type(api, monkeypatch):
    from bpfgate.agent import api as api_mod

    def missing(agent, a):
        raise NotFound("delete rule x on eth0 tc-ingress", "no such rule")

    monkeypatch.setitem(api_mod.OPS, "delete_rule", missing)
    with pytest.raises(NotFound, match="no such rule") as e:
        client.call("bgunit", "delete_rule", dev="eth0", hook="tc-ingress", name="x")
    assert e.value.exit_code == 2
    with pytest.raises(BpfgateError, match="unknown operation"):
        client.call("bgunit", "format_disk")


def test_a_dead_agents_socket_is_no_agent(tmp_path, monkeypatch):
    monkeypatch.setenv(client.DIR_ENV, str(tmp_path))
    path = client.socket_path("bgdead")
    os.makedirs(os.path.dirname(path))
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)   # bound, never listening: what a SIGKILLed agent leaves
    s.close()
    assert client.running("bgdead") is None


def _added(monkeypatch):
    """The agent's add_rule op replaced by one that records its request and answers position 3."""
    from bpfgate.agent import api as api_mod

    seen = []
    monkeypatch.setitem(api_mod.OPS, "add_rule", lambda agent, a: seen.append(a) or 3)
    return seen


ADD = ["rule", "add", "web", "--dev", "eth0", "--netns", "bgunit", "--proto", "tcp", "--dport", "80"]


def test_an_edit_command_line_is_parsed_and_run_by_the_agent(api, monkeypatch, capsys):
    """The client sends the command line as typed; the agent parses it with the click command, does the edit
    as its add_rule op, and hands back what the command prints and its exit code."""
    from bpfgate.cli import entry, main

    seen = _added(monkeypatch)
    assert entry.answered_by_agent(ADD) == 0
    assert capsys.readouterr() == ("OK   rule web added on eth0 tc-ingress at position 3\n", "")
    assert seen[0]["rule"] == {"name": "web", "action": "pass", "protocol": ["tcp"], "dst_port": ["80"]}
    assert entry.answered_by_agent(ADD[:3] + ["--netns=bgunit", "--json", "--dev", "eth0"]) == 0
    assert json.loads(capsys.readouterr().out) == {"added": "web", "dev": "eth0", "hook": "tc-ingress", "position": 3}
    assert entry.answered_by_agent(ADD + ["--frob"]) == 2   # click's usage error, as the full path prints it
    fast = capsys.readouterr()
    assert main.invoke(ADD + ["--frob"]) == 2 and capsys.readouterr() == fast
    assert fast.err.startswith("bpfgate: error: bpfgate rule add: No such option '--frob'")
    assert fast.err.count("\n") == 1
    assert entry.answered_by_agent(ADD + ["--mark", "x"]) == 2   # the command's own checks too
    assert "'x' is not a number" in capsys.readouterr().err and len(seen) == 2


def test_edits_the_agent_leaves_to_the_full_command_line(api, tmp_path, monkeypatch, capsys):
    """No socket, a dead agent's socket, another namespace than click parses: nothing done, None (the full
    command line runs)."""
    from bpfgate.cli import entry

    seen = _added(monkeypatch)
    assert entry.answered_by_agent(["rule", "add", "web", "--dev", "eth0", "--netns", "bgother"]) is None
    # the namespace read from the command line is the agent's, the one click parses (--comment's value) not
    assert entry.answered_by_agent(["rule", "add", "web", "--dev", "eth0", "--comment", "--netns=bgunit"]) is None
    assert not seen and capsys.readouterr() == ("", "")
    monkeypatch.setenv(client.DIR_ENV, str(tmp_path / "dead"))
    path = client.socket_path("bgunit")
    os.makedirs(os.path.dirname(path))
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    assert entry.answered_by_agent(ADD) is None and not seen


def test_only_the_edit_commands_run_in_the_agent(api):
    for argv in (["apply", "p.yaml"], ["rules"], ["rule"], ["policy", "remove"], "rule add x", [["rule"], "add"]):
        with pytest.raises(BpfgateError, match="not a command the agent runs"):
            client.call("bgunit", "cli", argv=argv, tty=[False, False], colour=[False, False])


def test_a_busy_agent_answers_an_edit_command_line_within_the_wait(api, monkeypatch, capsys):
    from bpfgate.cli import entry

    agent, _ = api
    _added(monkeypatch)
    agent.busy.acquire()   # a round in progress
    try:
        assert entry.answered_by_agent(ADD) == 1
    finally:
        agent.busy.release()
    err = capsys.readouterr().err
    assert err.startswith("bpfgate: error: add_rule through the bpfgate agent: ") and err.count("\n") == 1, err


def test_the_client_prints_as_its_own_terminal_would(api, monkeypatch):
    """Colour and JSON indent follow the client's streams, not the agent's."""
    from bpfgate.agent import api as api_mod

    agent, a = api
    monkeypatch.setitem(api_mod.OPS, "delete_rule", lambda agent, req: None)
    argv = ["rule", "del", "web", "--dev", "eth0", "--netns", "bgunit"]
    coloured = a.run_cli(argv, [True, False], [True, False])["stdout"]
    assert coloured == "\x1b[32mOK\x1b[0m   rule web deleted from eth0 tc-ingress\n"
    assert a.run_cli(argv + ["--json"], [True, False], [True, False])["stdout"].startswith('{\n  "deleted": "web"')
    assert a.run_cli(argv, [False, False], [False, False])["stdout"] == "OK   rule web deleted from eth0 tc-ingress\n"


def test_an_edit_answered_by_the_agent_imports_neither_click_nor_the_control_plane(api, monkeypatch):
    _added(monkeypatch)
    code = ("import sys\nfrom bpfgate.cli.entry import run\ntry:\n    run(sys.argv[1:])\nfinally:\n"
            "    print(sorted(m for m in ('click', 'rich', 'pydantic', 'bpfgate.policyctl') if m in sys.modules),"
            " file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, *ADD], capture_output=True, text=True, timeout=60, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "OK   rule web added on eth0 tc-ingress at position 3\n", "[]\n")


DEL = ["rule", "del", "web", "--dev", "eth0", "--netns", "bgunit"]


def test_an_unexpected_error_in_the_agent_is_answered_and_logged(api, monkeypatch, capsys):
    """Not one of ours: the client gets an error (never "no agent", which would make it edit directly beside
    the agent), the agent logs it as a JSON line with its traceback and keeps serving."""
    from bpfgate.agent import api as api_mod
    from bpfgate.cli import entry

    def broken(agent, a):
        raise RuntimeError("boom")

    monkeypatch.setitem(api_mod.OPS, "delete_rule", broken)
    for ask in (client.call, client.offer):
        with pytest.raises(BpfgateError, match="delete_rule in the bpfgate agent: RuntimeError: boom") as e:
            ask("bgunit", "delete_rule", dev="eth0", hook="tc-ingress", name="x")
        assert type(e.value) is BpfgateError and e.value.exit_code == 1
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["level"], r["msg"], r["op"], r["error"]) for r in logged] == \
        [("error", "request failed", "delete_rule", "RuntimeError: boom")] * 2
    assert "raise RuntimeError" in logged[0]["traceback"]
    assert entry.answered_by_agent(DEL) == 1   # the command line run in the agent: the same, one line
    err = capsys.readouterr().err.splitlines()
    assert json.loads(err[0])["msg"] == "request failed" and len(err) == 2   # the agent's log, then the client's
    assert err[1] == "bpfgate: error: delete_rule in the bpfgate agent: RuntimeError: boom (an error of the agent " \
                     "itself; see its log)", err
    assert client.running("bgunit")["pid"] == os.getpid()
    for bad in (b"[1]\n", b"{not json\n"):   # a malformed request: answered too
        reply = json.loads(api[1].answer(bad))
        assert not reply["ok"] and reply["error"]["cause"].startswith("bad request"), reply


@pytest.fixture
def mute_agent(tmp_path, monkeypatch):
    """A socket whose listener takes each request and closes without a reply (an agent that died on it)."""
    import threading

    monkeypatch.setenv(client.DIR_ENV, str(tmp_path))
    monkeypatch.setattr(client, "WAIT_S", 5)
    path = client.socket_path("bgmute")
    os.makedirs(os.path.dirname(path))
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)
    taken = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            taken.append(conn.makefile("rb").readline())
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield taken
    srv.close()
    t.join(5)


def test_an_agent_that_took_the_request_and_gave_no_reply_is_not_no_agent(mute_agent, capsys):
    """Only no socket or a refused connection mean no agent; here the client, the Python API and the CLI fail
    saying the agent did not answer, and none of them edits directly."""
    from bpfgate import policyctl
    from bpfgate.cli import entry, main

    with pytest.raises(BpfgateError, match="delete_rule through the bpfgate agent: the agent did not answer"):
        client.offer("bgmute", "delete_rule", dev="eth0", hook="tc-ingress", name="x")
    with pytest.raises(BpfgateError, match="the agent did not answer"):
        policyctl.delete_rule("eth0", "tc-ingress", "x", netns="bgmute")
    with pytest.raises(BpfgateError, match="ping through the bpfgate agent: the agent did not answer"):
        client.running("bgmute")   # apply's refusal asks this: it must not take the agent for gone
    argv = ["rule", "del", "x", "--dev", "eth0", "--netns", "bgmute"]
    assert entry.answered_by_agent(argv) == 1 and main.invoke(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("the agent did not answer") == 2 and "Traceback" not in err, err
    assert len(mute_agent) == 5


def _errors() -> list[BpfgateError]:
    from bpfgate.engine.engine import NoRoom
    from bpfgate.errors import AttachError, NotSupported, PacketError, PolicyError, VerifierError
    from bpfgate.policyctl.apply import ApplyError

    return [VerifierError("load engine", "12: (bf) r1 = r6\nR1 invalid mem access 'scalar'", "the whole log",
                          prog="bg_engine"),
            NotSupported("tcx", "not in this kernel", min_kernel="6.6", errno=95),
            PolicyError("rule web.src", "'198.18.0.300/32' is not an address"),
            PacketError("tcp to x", "x", "not an address"), AttachError("attach eth0", 16),
            NoRoom("rule web", "no room"), NotFound("delete rule x", "no such rule", hint="see `bpfgate rules`"),
            ApplyError("apply policy", NotFound("swap", "gone"), 0, [])]


@pytest.mark.parametrize("err", _errors(), ids=lambda e: type(e).__name__)
def test_errors_cross_the_socket_with_their_fields(api, monkeypatch, err):
    """Each error a reply can carry is rebuilt with its type (the nearest of bpfgate.errors), message, exit code
    and fields: a VerifierError keeps the summary the CLI prints under it, a PolicyError its path and reason."""
    from bpfgate import errors
    from bpfgate.agent import api as api_mod

    def failing(agent, a):
        raise err

    monkeypatch.setitem(api_mod.OPS, "set_add", failing)
    with pytest.raises(BpfgateError) as e:
        client.offer("bgunit", "set_add", name="s", elements=["x"])
    got = e.value
    want = next(c for c in type(err).__mro__ if getattr(errors, c.__name__, None) is c)
    assert type(got) is want and str(got) == str(err) and got.exit_code == err.exit_code
    assert (got.op, got.cause, got.hint) == (err.op, err.cause, err.hint)
    assert json.loads(json.dumps(vars(err), default=str)) == vars(got)


def test_a_verifier_error_from_the_agent_prints_as_the_cli_prints_one(api, monkeypatch, capsys):
    from bpfgate.agent import api as api_mod
    from bpfgate.cli import main

    err = _errors()[0]

    def failing(agent, a):
        raise err

    monkeypatch.setitem(api_mod.OPS, "delete_rule", failing)
    assert main.invoke(DEL) == 5   # the full command line, its edit offered to the agent
    out, text = capsys.readouterr()
    assert out == "" and text.startswith("bpfgate: error: load engine: verifier rejected program 'bg_engine': ")
    assert "R1 invalid mem access 'scalar'" in text and "12: (bf) r1 = r6" in text and "Traceback" not in text


def test_an_agent_whose_queue_is_full_is_busy_not_gone(tmp_path, monkeypatch, capsys):
    """A listener that takes no connection: the client fails saying the agent is busy (no traceback, no direct
    edit beside it)."""
    from bpfgate.cli import entry

    monkeypatch.setenv(client.DIR_ENV, str(tmp_path))
    path = client.socket_path("bgfull")
    os.makedirs(os.path.dirname(path))
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(0)
    queued = socket.socket(socket.AF_UNIX)
    queued.connect(path)   # fills the queue: nobody accepts
    try:
        with pytest.raises(BpfgateError, match="delete_rule through the bpfgate agent: the agent takes no connection"):
            client.offer("bgfull", "delete_rule", dev="eth0", hook="tc-ingress", name="x")
        assert entry.answered_by_agent(["rule", "del", "x", "--dev", "eth0", "--netns", "bgfull"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("bpfgate: error: delete_rule through the bpfgate agent: the agent takes no") and \
            err.count("\n") == 1, err
    finally:
        queued.close()
        srv.close()
