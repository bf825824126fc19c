"""Talking to a running agent: while one runs for a namespace, the control plane's writes go through it
(rule add/del are done by the agent, between its rounds) or are refused (apply: the agent's directory
is the desired state), so there is one writer. The socket is root's only (0600 in a 0700 directory).
When no agent runs (no socket, or a dead agent's), everything works directly as before."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from bpfgate import errors
from bpfgate.errors import BpfgateError

DIR_ENV = "BPFGATE_AGENT_DIR"
DEFAULT_DIR = "/run/bpfgate/agent"
WAIT_S = float(os.environ.get("BPFGATE_AGENT_WAIT", "30"))   # how long a command waits for a busy agent
in_agent = False   # set in the agent's own process: its calls run directly


def state_dir() -> str:
    return os.environ.get(DIR_ENV) or DEFAULT_DIR


def ns_dir(netns: str | None, root: str | None = None) -> str:
    return os.path.join(root or state_dir(), netns or "host")


def socket_path(netns: str | None, root: str | None = None) -> str:
    return os.path.join(ns_dir(netns, root), "agent.sock")


def running(netns: str | None) -> dict | None:
    """The agent of `netns` ({"pid", "policy_dir"}) if one answers, else None."""
    if in_agent or not os.path.exists(socket_path(netns)):
        return None
    try:
        return _call(netns, {"op": "ping"})["result"]
    except _NoAgent:
        return None


def call(netns: str | None, op: str, **args: Any) -> Any:
    """Run `op` in the agent of `netns`; its result, or its error raised here with its type."""
    return _call(netns, {"op": op, **args})["result"]


NOT_RUNNING = object()


def offer(netns: str | None, op: str, **args: Any) -> Any:
    """`op` done by the agent of `netns` when one runs (its result, or its error raised here), else
    NOT_RUNNING: the caller does it itself. One connection and nothing of the policy model imported: a
    command that edits through the agent skips the ~0.3 s of loading the control plane."""
    if in_agent or not os.path.exists(socket_path(netns)):
        return NOT_RUNNING
    try:
        return _call(netns, {"op": op, **args})["result"]
    except _NoAgent:
        return NOT_RUNNING


class _NoAgent(Exception):
    pass


def _call(netns: str | None, request: dict) -> dict:
    path = socket_path(netns)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT_S)
    try:
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise _NoAgent() from None   # a socket a killed agent left: nobody listens
        except PermissionError:
            raise errors.PermissionDenied(f"talk to the bpfgate agent at {path}", "permission denied") from None
        s.sendall(json.dumps(request, default=str).encode() + b"\n")   # addresses as text
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise BpfgateError(f"{request['op']} through the bpfgate agent",
                               f"no answer in {WAIT_S:g} s: the agent is busy (reconciling)",
                               hint="try again, or raise BPFGATE_AGENT_WAIT") from None
    finally:
        s.close()
    if not data:
        raise _NoAgent()
    reply = json.loads(data)
    if not reply.get("ok"):
        e = reply["error"]
        cls = getattr(errors, e.get("type", ""), None)
        if not (isinstance(cls, type) and issubclass(cls, BpfgateError)):
            cls = BpfgateError
        err = cls.__new__(cls)   # its type (exit code) kept; the subclasses' constructors differ
        BpfgateError.__init__(err, e["op"], e["cause"], hint=e.get("hint"))
        raise err
    return reply


def refuse_writes(netns: str | None, what: str) -> None:
    """Writes other than rule edits are the agent's alone while it runs."""
    agent = running(netns)
    if agent is not None:
        where = f"netns {netns}" if netns else "this namespace"
        raise BpfgateError(f"{what} in {where}", f"the bpfgate agent (pid {agent['pid']}) owns its policies",
                           hint=f"put the policy in its directory {agent['policy_dir']}, or stop the agent")
