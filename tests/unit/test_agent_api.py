"""The agent's socket without a kernel: a request waits for the round in progress a bounded time and
then fails clearly; errors keep their type; a socket nobody listens on means no agent."""

from __future__ import annotations

import os
import socket

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
