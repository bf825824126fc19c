"""Named sets end to end, as a user runs them, beside nftables in the same run and namespace.

A policy file with one address set of N elements (IPv4 /24 and /32, IPv6 /48, /64 and /128, mixed, distinct)
and one rule dropping its sources, on one veth in a named network namespace (a sandbox made here):
  apply        `bpfgate apply FILE` onto an interface with no policy (attach), end to end
  inline       the same, of a file whose rule lists the N elements itself (`src: [...]`, no set): a blocklist
               written inline
  set add      `bpfgate set add blocklist ELEMENT` at N elements, end to end (a process each)
  set del      `bpfgate set del blocklist ELEMENT`
  in-process   Engine.edit_set() of one element (lock, catch-up, the edit, journal) and, of that, the kernel
               writes alone (Engine._write_stage): what an agent holding the engine open would pay
  shapes       `policy classifier`'s shapes and lookups before and after 1000 live adds (must not change)
Peer: `nft -f` of the same elements as two interval sets (collapsed), `nft add element` / `nft delete element`.
Per CLI measured (`--cli LABEL=SRC_DIR`, e.g. a checkout of main before a change; default: this checkout), the
CLI commands in rounds of every CLI in turn; the in-process figures and shapes are this checkout's.
Run as root:  .venv/bin/python bench/bench_sets.py [--elements N] [--reps R] [--cli base=/path/src ...]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_control_plane import Cli, stat, timed
from common import header

from bpfgate.sandbox import Sandbox


def elements(n: int, seed: int = 1) -> list:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        v6 = len(out) % 2 == 1
        width, plen = (128, rng.choice([48, 64, 128])) if v6 else (32, rng.choice([24, 32, 32]))
        addr = rng.getrandbits(width) >> (width - plen) << (width - plen)
        net = (ipaddress.IPv6Network if v6 else ipaddress.IPv4Network)((addr, plen))
        if net not in seen:
            seen.add(net)
            out.append(net)
    return out


def policy_text(dev: str, nets: list) -> str:
    return (f"version: 1\ninterfaces: [{dev}]\nsets:\n  blocklist:\n    type: addr\n    elements:\n"
            + "".join(f'      - "{p}"\n' for p in nets)
            + 'hooks:\n  tc-ingress:\n    default: allow\n    rules:\n'
            + '      - {name: blocked, src: "@blocklist", action: drop}\n')


def inline_text(dev: str, nets: list) -> str:
    return (f"version: 1\ninterfaces: [{dev}]\nhooks:\n  tc-ingress:\n    default: allow\n    rules:\n"
            "      - name: blocked\n        action: drop\n        src:\n" + "".join(f'          - "{p}"\n' for p in nets))


def nft_text(nets: list, dev: str) -> str:
    v4 = ", ".join(str(p) for p in ipaddress.collapse_addresses(p for p in nets if p.version == 4))
    v6 = ", ".join(str(p) for p in ipaddress.collapse_addresses(p for p in nets if p.version == 6))
    return ("table inet bgsets {\n"
            f"  set b4 {{ type ipv4_addr; flags interval; elements = {{ {v4} }} }}\n"
            f"  set b6 {{ type ipv6_addr; flags interval; elements = {{ {v6} }} }}\n"
            f"  chain in {{ type filter hook ingress device {dev} priority 0; ip saddr @b4 drop; "
            "ip6 saddr @b6 drop; }\n}\n")


def free_addresses(nets: list, n: int) -> list[str]:
    taken = [p for p in nets if p.version == 4]
    rng, out = random.Random(7), []
    while len(out) < n:
        a = ipaddress.IPv4Address(rng.getrandbits(32))
        if not any(a in p for p in taken):
            out.append(str(a))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--elements", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cli", action="append", default=[], metavar="LABEL=SRC",
                    help="a bpfgate source tree to measure (PYTHONPATH); default: this checkout as 'now'")
    args = ap.parse_args()
    clis = [Cli(*c.split("=", 1)) for c in args.cli] or [Cli("now", None)]
    header(f"named sets end to end, {args.elements} elements, {args.reps} reps")
    nets = elements(args.elements)
    free = free_addresses(nets, max(args.reps, 1000))
    with Sandbox() as sb, tempfile.TemporaryDirectory() as tmp:
        fw, peer = sb.host("fw"), sb.host("peer")
        dev, ns = sb.link(fw, peer).end(fw).name, fw.netns
        path, nft_path = os.path.join(tmp, "sets.yaml"), os.path.join(tmp, "sets.nft")
        inline_path = os.path.join(tmp, "inline.yaml")
        with open(path, "w") as f:
            f.write(policy_text(dev, nets))
        with open(inline_path, "w") as f:
            f.write(inline_text(dev, nets))
        with open(nft_path, "w") as f:
            f.write(nft_text(nets, dev))
        nft = ["ip", "netns", "exec", ns, "nft"]
        r: dict[str, list] = {k: [] for k in ("nft_apply", "nft_add", "nft_del", "edit", "kernel")}
        by: dict[str, dict[str, list]] = {c.label: {"apply": [], "add": [], "del": [], "inline": []} for c in clis}
        for i in range(args.reps):
            subprocess.run(nft + ["delete", "table", "inet", "bgsets"], capture_output=True)
            r["nft_apply"].append(timed(nft + ["-f", nft_path])[0])
            elem = ["inet", "bgsets", "b4", f"{{ {free[i]} }}"]
            r["nft_add"].append(timed(nft + ["add", "element", *elem])[0])
            r["nft_del"].append(timed(nft + ["delete", "element", *elem])[0])
        subprocess.run(nft + ["delete", "table", "inet", "bgsets"], capture_output=True)
        for i in range(args.reps):
            for cli in clis[i % len(clis):] + clis[:i % len(clis)]:   # the first one rotates
                m = by[cli.label]
                remove = [sys.executable, "-m", "bpfgate", "policy", "remove", "--netns", ns]
                subprocess.run(remove, env=cli.env, capture_output=True)
                try:
                    m["inline"].append(cli.run("apply", "--netns", ns, inline_path)[0])
                except SystemExit as e:   # a build that refuses the form
                    m["inline"].append(None)
                    print(f"  {cli.label} inline: {str(e)[-160:]}")
                subprocess.run(remove, env=cli.env, capture_output=True)
                m["apply"].append(cli.run("apply", "--netns", ns, path)[0])
                m["add"].append(cli.run("set", "add", "blocklist", free[i], "--netns", ns)[0])
                m["del"].append(cli.run("set", "del", "blocklist", free[i], "--netns", ns)[0])
                inline = "refused" if m["inline"][-1] is None else f"{m['inline'][-1]:.2f} s"
                print(f"  {cli.label} apply #{i + 1}: {m['apply'][-1]:.2f} s; set add/del "
                      f"{m['add'][-1] * 1000:.0f} / {m['del'][-1] * 1000:.0f} ms; inline apply {inline}", flush=True)

        from bpfgate import policyctl
        from bpfgate.engine import Engine

        before = policyctl.classifier(dev, netns=ns)[0]
        with Engine.open(dev, "tc-ingress", ns) as eng:
            write = eng._write_stage
            spent = []

            def timed_write(st):
                t = time.perf_counter()
                write(st)
                spent.append(time.perf_counter() - t)
            eng._write_stage = timed_write
            for a in free[:1000]:
                t = time.perf_counter()
                eng.edit_set("blocklist", [a], add=True)
                r["edit"].append(time.perf_counter() - t)
            r["kernel"] = list(spent)
            after = policyctl.classifier(dev, netns=ns)[0]
            for a in free[:1000]:
                eng.edit_set("blocklist", [a], add=False)
        subprocess.run([sys.executable, "-m", "bpfgate", "policy", "remove", "--netns", ns], capture_output=True)
    ms = dict(unit="ms", scale=1000)
    labels = [c.label for c in clis]
    print(f"\n| operation ({args.elements} elements) | {' | '.join('bpfgate ' + x for x in labels)} | nft |"
          f"{''.join(f' {x} / nft |' for x in labels)}\n|---|{'---|' * (2 * len(labels) + 1)}")
    for key, what, unit in (("apply", "apply, fresh attach", {}), ("add", "set add, CLI end to end", ms),
                            ("del", "set del, CLI end to end", ms), ("inline", "apply, the elements inline (no set)", {})):
        peer = r["nft_" + ("apply" if key == "inline" else key)]
        got = {x: [v for v in by[x][key] if v is not None] for x in labels}
        ratios = "".join(f" {statistics.median(got[x]) / statistics.median(peer):.1f}x |" if got[x] else " - |"
                         for x in labels)
        print(f"| {what} | {' | '.join(stat(got[x], **unit) if got[x] else 'refused' for x in labels)} | "
              f"{stat(peer, **unit)} |{ratios}")
    us = dict(unit="us", scale=1e6)
    print(f"\nset add in-process, engine held open (1000 adds): {stat(r['edit'], **us)}; "
          f"of which kernel writes {stat(r['kernel'], **us)}")
    probes = lambda rep: {t.tree: t.max_probes for t in rep.stage0}   # noqa: E731
    print(f"\nshapes (hash lookups per packet at most) before / after 1000 live adds: {before.lookups_worst} / "
          f"{after.lookups_worst}; stage 0 probes at most: {probes(before)} / {probes(after)}")


if __name__ == "__main__":
    main()
