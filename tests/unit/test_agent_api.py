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
