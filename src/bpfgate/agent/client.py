"""Talking to a running agent: while one runs for a namespace, the control plane's writes go through it
(rule add/del, set add/del are done by the agent, between its rounds) or are refused (apply: the agent's
directory is the desired state), so there is one writer. The socket is root's only (0600 in a 0700
directory). When no agent runs (no socket, or a dead agent's), everything works directly as before.

The CLI's edit commands (CLI_EDITS) go further: their whole command line is sent before click is imported
(cli/entry.py), and the agent runs it with the CLI's own click command (agent/api.py), its edit offered
back to the agent in-process (`here`). Light to import: such a client imports neither typing nor json and socket
(wire.py)."""

from __future__ import annotations

import os
from contextvars import ContextVar

TYPE_CHECKING = False   # not `from typing`: typing is ~5 ms of the start of a command answered before click
if TYPE_CHECKING:
    from typing import Any, Callable

from bpfgate import errors
from bpfgate.agent import wire
from bpfgate.errors import BpfgateError

DIR_ENV = "BPFGATE_AGENT_DIR"
DEFAULT_DIR = "/run/bpfgate/agent"
WAIT_S = float(os.environ.get("BPFGATE_AGENT_WAIT", "30"))   # how long a command waits for a busy agent
in_agent = False   # set in the agent's own process: its calls run directly
# in the agent's process, while it runs a client's edit command (api.py): the agent's own request runner,
# which the command's offer() goes to (the agent's engines, its busy lock)
here: ContextVar[Callable[[str | None, dict], Any] | None] = ContextVar("bpfgate_agent_here", default=None)

# the commands whose whole command line a running agent answers (cli/entry.py), by their first two words:
# the operation each does through the agent. Only these ever run in the agent for a client.
CLI_EDITS = {("rule", "add"): "add_rule", ("rule", "del"): "delete_rule", ("set", "add"): "set_add",
             ("set", "del"): "set_delete"}


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
    local = here.get()
    if local is not None:   # the agent runs a client's command: the agent does the edit
        return local(netns, {"op": op, **args})
    if in_agent or not os.path.exists(socket_path(netns)):
        return NOT_RUNNING
    try:
        return _call(netns, {"op": op, **args})["result"]
    except _NoAgent:
        return NOT_RUNNING


def run_cli(netns: str | None, argv: list[str], streams: dict) -> dict | None:
    """The command line `argv` (one of CLI_EDITS, its namespace `netns`) run by the agent of `netns`:
    {"stdout", "stderr", "code"} as the command would print and exit, for `streams` (cli.term.streams());
    None when no agent runs there, or it leaves the command to the caller (another namespace's edit)."""
    if not os.path.exists(socket_path(netns)):
        return None
    try:
        return _call(netns, {"op": "cli", "argv": argv, **streams}, CLI_EDITS[tuple(argv[:2])])["result"]
    except _NoAgent:
        return None


class _NoAgent(Exception):
    pass


def _call(netns: str | None, request: dict, what: str | None = None) -> dict:
    """One request, its reply; `what`: the operation's name in a timeout's error (default the op's).
    _NoAgent only when nobody listens (no socket, connection refused): an agent that took the request and
    gave no reply is an error, never "no agent", or the caller would write beside a running agent."""
    path = socket_path(netns)
    doing = f"{what or request['op']} through the bpfgate agent"
    s = wire.unix_socket()
    s.settimeout(WAIT_S)
    try:
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise _NoAgent() from None   # a socket a killed agent left: nobody listens
        except PermissionError:
            raise errors.PermissionDenied(f"talk to the bpfgate agent at {path}", "permission denied") from None
        except (BlockingIOError, wire.TIMEOUT):   # its queue of connections full: it listens, it is stuck
            raise BpfgateError(doing, "the agent takes no connection (its queue is full): it is busy",
                               hint="try again; see its log if this lasts") from None
        data = b""
        try:
            s.sendall(wire.dumps(request) + b"\n")   # addresses as text
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except wire.TIMEOUT:
            raise BpfgateError(doing, f"no answer in {WAIT_S:g} s: the agent is busy (reconciling)",
                               hint="try again, or raise BPFGATE_AGENT_WAIT") from None
        except OSError as e:   # reset or broken pipe: the agent went away while it had the request
            data = b""
            lost = f" ({e.strerror or e})"
        else:
            lost = ""
    finally:
        s.close()
    try:
        reply = wire.loads(data) if data.endswith(b"\n") else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise BpfgateError(doing, f"the agent did not answer{lost}: it closed the connection without a reply",
                           hint="nothing was done here, beside the agent; see its log, and try again")
    if not reply.get("ok"):
        raise rebuilt(reply["error"])
    return reply


def error_reply(e: BaseException, op: str) -> dict:
    """The reply's "error" for `e` raised while the agent served `op`: a BpfgateError with its type (the
    nearest of bpfgate.errors), exit code and fields (a VerifierError's summary, a PolicyError's path, ...),
    anything else as a BpfgateError naming its type and message."""
    if not isinstance(e, BpfgateError):
        return {"type": "BpfgateError", "op": f"{op} in the bpfgate agent", "cause": f"{type(e).__name__}: {e}",
                "hint": "an error of the agent itself; see its log"}
    known = next(c for c in type(e).__mro__ if getattr(errors, c.__name__, None) is c)
    fields = {k: v for k, v in vars(e).items() if k not in ("op", "cause", "hint") and not k.startswith("_")}
    return {"type": known.__name__, "op": e.op, "cause": e.cause, "hint": e.hint, "message": str(e),
            "exit_code": e.exit_code, "fields": fields}


def rebuilt(e: dict) -> BpfgateError:
    """The error of a reply (error_reply) raised here: its type, message, exit code and fields as the agent
    had them (a VerifierError keeps its summary for the CLI's detail line)."""
    cls = getattr(errors, e.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, BpfgateError)):
        cls = BpfgateError
    err = cls.__new__(cls)   # the subclasses' constructors differ: their fields are set as they were
    BpfgateError.__init__(err, e["op"], e["cause"], hint=e.get("hint"))
    err.__dict__.update(e.get("fields") or {})
    if e.get("message"):
        err.args = (e["message"],)
    if e.get("exit_code", cls.exit_code) != cls.exit_code:
        err.exit_code = e["exit_code"]
    return err


def refuse_writes(netns: str | None, what: str) -> None:
    """Writes other than rule edits are the agent's alone while it runs."""
    agent = running(netns)
    if agent is not None:
        where = f"netns {netns}" if netns else "this namespace"
        raise BpfgateError(f"{what} in {where}", f"the bpfgate agent (pid {agent['pid']}) owns its policies",
                           hint=f"put the policy in its directory {agent['policy_dir']}, or stop the agent")
