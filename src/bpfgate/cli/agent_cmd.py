"""`bpfgate agent`: reconcile a namespace's policy engines with a policy directory, serve health and metrics."""

from __future__ import annotations

import os
import signal
import threading

import click

from bpfgate.cli import term
from bpfgate.cli.params import UserPath

DEFAULT_LISTEN = "127.0.0.1:9465"


def register(app: click.Group) -> None:
    @app.command("agent")
    @click.option("--policy-dir", required=True, type=UserPath(file_okay=False), metavar="DIR",
                  help="Policy files (*.yaml, *.yml, *.json); interface entries may be patterns (veth*).")
    @click.option("--netns", help="Manage the engines of this named network namespace.")
    @click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="ADDR:PORT",
                  help="/healthz, /readyz and /metrics (loopback unless you name another address; port 0: any)")
    @click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
                  metavar="SECONDS", help="How often to reconcile; a file of DIR written or an interface appearing "
                  "or going (and SIGHUP) starts a round at once.")
    @click.option("--state-dir", default=None, metavar="DIR", help="Where the agent keeps its lock, socket and "
                  "record of what it applied [default: $BPFGATE_AGENT_DIR or /run/bpfgate/agent]; the CLI finds "
                  "a running agent there.")
    @click.option("--once", is_flag=True, help="Reconcile once and exit (exit 1 if a file was not applied).")
    def agent_cmd(policy_dir, netns, listen, interval, state_dir, once):
        """Keep the policy engines of a namespace in step with DIR: changed files are applied, engines
        missing from the kernel attached again, hooks no file names detached. A bad file is reported (JSON
        log lines on stderr) and leaves the others running. Stopping the agent leaves the engines running
        (they run from their pins); the next agent takes them over without re-attaching."""
        from bpfgate.agent import Agent, client
        from bpfgate.agent.api import Api
        from bpfgate.agent.daemon import log
        from bpfgate.agent.http import Server
        from bpfgate.agent.watch import watch
        from bpfgate.errors import NotFound
        from bpfgate.kernel import netlink

        if not os.path.isdir(policy_dir):
            raise NotFound(f"bpfgate agent --policy-dir {policy_dir}", "no such directory")
        netlink.interfaces(netns)   # a namespace that does not exist: refused before anything starts
        client.in_agent = True   # this process writes directly; others go through its socket
        agent = Agent(policy_dir, netns=netns, state_dir=state_dir)
        agent.lock()
        try:
            if once:
                rnd = agent.reconcile()
                term.print_json({"applied": rnd.applied, "repaired": [list(map(str, k)) for k in rnd.repaired],
                                 "removed": [[d, h.value] for d, h in rnd.removed], "errors": rnd.errors})
                return 1 if rnd.errors else 0
            server = Server(agent, interval)
            host, port = server.serve(listen)
            api = Api(agent)
            sock = api.serve()
            watcher, unwatched = watch(agent.policy_dir, netns, agent.wake)
            if watcher is None:
                log("warning", "not watching the directory and interfaces: acting every --interval only",
                    error=unwatched)
            stop = threading.Event()
            handlers = {signal.SIGTERM: lambda *_: stop.set() or agent.wake(),
                        signal.SIGINT: lambda *_: stop.set() or agent.wake(),
                        signal.SIGHUP: lambda *_: agent.wake()}
            old = {s: signal.signal(s, h) for s, h in handlers.items()}
            log("info", "agent started", pid=os.getpid(), policy_dir=agent.policy_dir, netns=netns,
                listen=f"{host}:{port}", socket=sock, interval=interval, watching=watcher is not None)
            try:
                agent.run(interval, stop)
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
                if watcher is not None:
                    watcher.close()
                api.close()
                server.close()
                log("info", "agent stopped; the engines keep running from their pins")
        finally:
            agent.unlock()
