"""The agent's unix socket (root only): one JSON request per connection, one JSON reply. Requests run
between reconcile rounds (the agent's `busy` lock), so the agent is the one writer of its namespace.
Requests are the operations of OPS, or ("cli") the command line of one of the CLI's edit commands
(client.CLI_EDITS, nothing else), run here with the CLI's click command: what it prints comes back."""

from __future__ import annotations

import json
import os
import socketserver
import threading
import traceback
from typing import Any, Callable

from bpfgate.agent import client
from bpfgate.agent.daemon import Agent, log
from bpfgate.errors import BpfgateError


def _rule_add(agent: Agent, a: dict) -> Any:
    from bpfgate import policyctl

    return policyctl.add_rule(a["dev"], a["hook"], a["rule"], netns=agent.netns, before=a.get("before"),
                              after=a.get("after"), position=a.get("position"), force=a.get("force", False),
                              owner=a.get("owner"), backend=agent.engines)


def _rule_del(agent: Agent, a: dict) -> Any:
    from bpfgate import policyctl

    policyctl.delete_rule(a["dev"], a["hook"], a["name"], netns=agent.netns, force=a.get("force", False),
                          backend=agent.engines)
    return None


def _set_edit(add: bool) -> Callable[[Agent, dict], Any]:
    def run(agent: Agent, a: dict) -> Any:
        from bpfgate import policyctl

        edit = policyctl.set_add if add else policyctl.set_delete
        return edit(a["name"], a["elements"], netns=agent.netns, backend=agent.engines)
    return run


OPS: dict[str, Callable[[Agent, dict], Any]] = {"add_rule": _rule_add, "delete_rule": _rule_del,
                                                "set_add": _set_edit(True), "set_delete": _set_edit(False)}


class _Elsewhere(Exception):
    """A client's edit command names another namespace than the agent's: the client runs it itself."""


def _named(req: dict) -> str:
    """The request's operation, as its client names it (a command line: the edit it does)."""
    op, argv = str(req.get("op")), req.get("argv")
    if op == "cli" and isinstance(argv, list) and all(isinstance(a, str) for a in argv[:2]):
        return client.CLI_EDITS.get(tuple(argv[:2]), op)
    return op


class Api:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.path = client.socket_path(agent.netns, os.path.dirname(agent.dir))
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def serve(self) -> str:
        api = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(api.answer(self.rfile.readline()))

        try:
            os.unlink(self.path)   # a killed agent's (the pid lock says no agent runs)
        except FileNotFoundError:
            pass
        old = os.umask(0o077)      # the socket is root's alone from its first moment
        try:
            self._server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="agent-api", daemon=True).start()
        self.agent.serving = True
        return self.path

    def answer(self, line: bytes) -> bytes:
        """The reply to one request line: always one, whatever went wrong (a client with no reply must not
        take it for "no agent" and write beside the agent); an error not of ours is logged with its
        traceback."""
        op = "agent request"
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            reply = {"ok": False, "error": {"type": "BpfgateError", "op": op, "cause": f"bad request: {e}"}}
        else:
            op = _named(req)
            try:
                reply = {"ok": True, "result": self.run(req)}
            except Exception as e:   # noqa: BLE001 - every request gets its answer; the agent keeps serving
                if not isinstance(e, BpfgateError):
                    log("error", "request failed", op=op, error=f"{type(e).__name__}: {e}",
                        traceback=traceback.format_exc())
                reply = {"ok": False, "error": client.error_reply(e, op)}
        try:
            return json.dumps(reply, default=str).encode() + b"\n"
        except (TypeError, ValueError) as e:   # a result JSON cannot carry (default=str takes most)
            log("error", "reply not serialisable", op=op, error=f"{type(e).__name__}: {e}")
            return json.dumps({"ok": False, "error": client.error_reply(e, op)}).encode() + b"\n"

    def run(self, req: dict) -> Any:
        op = req.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "policy_dir": self.agent.policy_dir}
        if op == "cli":
            plain = [False, False]
            return self.run_cli(req.get("argv"), req.get("tty") or plain, req.get("colour") or plain)
        fn = OPS.get(op)
        if fn is None:
            raise BpfgateError("agent request", f"unknown operation {op!r}")
        if not self.agent.busy.acquire(timeout=client.WAIT_S):
            raise BpfgateError(f"{op} through the bpfgate agent",
                               f"the agent is still reconciling after {client.WAIT_S:g} s")
        try:
            return fn(self.agent, req)
        finally:
            self.agent.busy.release()

    def run_cli(self, argv: list[str], tty: list[bool], colour: list[bool]) -> dict | None:
        """A client's whole command line, one of client.CLI_EDITS only, parsed and run by the very click
        command the CLI has, its edit done here as a request (run(): the held engines, the busy lock) and
        what it printed returned for the client to write (as its own stdout/stderr would show it). None: the
        command's namespace is not the agent's, nothing was done."""
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)
                and tuple(argv[:2]) in client.CLI_EDITS):
            raise BpfgateError("agent request", "not a command the agent runs: only "
                               + ", ".join(" ".join(k) for k in client.CLI_EDITS))
        from bpfgate.cli import main, term

        def here(netns: str | None, request: dict) -> Any:
            if netns != self.agent.netns:
                raise _Elsewhere()
            if request["op"] not in OPS:
                raise BpfgateError("agent request", f"unknown operation {request['op']!r}")
            return self.run(request)

        token = client.here.set(here)
        try:
            with term.Captured(tty, colour) as cap:
                code = main.invoke(argv)
        except _Elsewhere:
            return None
        finally:
            client.here.reset(token)
        return {"stdout": cap.out.getvalue(), "stderr": cap.err.getvalue(), "code": code}

    def close(self) -> None:
        self.agent.serving = False
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
