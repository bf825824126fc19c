"""The control plane end to end, as a user runs it: the `bpfgate` CLI at 100k rules, beside nftables.

A policy file of N source-CIDR drop rules (IPv4 /12../32 and IPv6 /24../128, alternating, distinct, one
rule each) on one veth in a named network namespace (a sandbox made here). Per CLI measured (`--cli
LABEL=SRC_DIR`, e.g. the main branch's checkout before a change, to compare in the same run; default: this
checkout), each a separate process timed from start to exit, `reps` rounds of every CLI in turn, the first
one rotating (median, min-max):
  apply        `bpfgate apply FILE` onto an interface with no policy (attach)          + its peak RSS
  apply JSON   the same policy written as JSON (what a script writes), onto no policy
  reapply      the same file again (no change)
  change10     a file changing 10 rules of N (the two files alternate: each apply swaps 10 rules)  + RSS
  rule add     `bpfgate rule add` of one CIDR drop rule at N rules
  rule del     `bpfgate rule del` of it
  rules json   `bpfgate rules --json` (every rule with its counters), after the edits; and once right after
               each fresh apply (the first listing of a new state)
Peer in the same run and namespace: `nft -f` of the same prefixes as two interval sets (ipv4_addr,
ipv6_addr; overlapping prefixes collapsed, as an interval set needs) in a fresh table with one drop rule
per set; `nft add element` / `nft delete element` of one prefix. And `nft -f` of the file as nft rules, one
per prefix with a counter, in order (what bpfgate's file says: first match, a counter per rule; nft then
walks them one by one per packet).
Run as root:  .venv/bin/python bench/bench_control_plane.py [--rules N] [--reps R] [--cli base=/path/src ...]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(__file__))
from common import header

from bpfgate.sandbox import Sandbox

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prefixes(n: int, seed: int = 1) -> list:
    """n distinct prefixes, IPv4 /12../32 and IPv6 /24../128 alternating, spread over the address space."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        v6 = len(out) % 2 == 1
        width, lo = (128, 24) if v6 else (32, 12)
        plen = rng.randint(lo, width)
        addr = rng.getrandbits(width) >> (width - plen) << (width - plen)
        net = (ipaddress.IPv6Network if v6 else ipaddress.IPv4Network)((addr, plen))
        if net not in seen:
            seen.add(net)
            out.append(net)
    return out


def policy_text(dev: str, nets: list) -> str:
    head = f"version: 1\ninterfaces: [{dev}]\nhooks:\n  tc-ingress:\n    default: allow\n    rules:\n"
    return head + "".join(f"      - name: r{i}\n        src: {p}\n        action: drop\n" for i, p in enumerate(nets))


def nft_text(nets: list) -> str:
    """The policy's prefixes as two interval sets. Overlapping elements are refused by an interval set
    (auto-merge takes them, but ~20x slower): the sets hold them collapsed, which matches the same packets."""
    v4 = ", ".join(str(p) for p in ipaddress.collapse_addresses(p for p in nets if p.version == 4))
    v6 = ", ".join(str(p) for p in ipaddress.collapse_addresses(p for p in nets if p.version == 6))
    return ("table inet bgbench {\n"
            f"  set b4 {{ type ipv4_addr; flags interval; elements = {{ {v4} }} }}\n"
            f"  set b6 {{ type ipv6_addr; flags interval; elements = {{ {v6} }} }}\n"
            "  chain in { type filter hook ingress device %s priority 0; ip saddr @b4 drop; ip6 saddr @b6 drop; }\n"
            "}\n")


def nft_rules_text(nets: list) -> str:
    """The policy as nft rules: one per prefix, in order, each with its counter."""
    body = "".join(f"    {'ip' if p.version == 4 else 'ip6'} saddr {p} counter drop\n" for p in nets)
    return "table inet bgbench {\n  chain in {\n    type filter hook ingress device %s priority 0;\n" + body + "  }\n}\n"


def timed(argv: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """(seconds, result) of one process, start to exit."""
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, env=env, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:8])} ... failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return dt, res


def command() -> list[str]:
    """The `bpfgate` command as a user runs it: the installed script beside this interpreter (PYTHONPATH
    still picks the tree it imports), else `python -m bpfgate` (runpy costs ~3 ms more of each start)."""
    script = os.path.join(os.path.dirname(sys.executable), "bpfgate")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "bpfgate"]


# runs the command, passes its output through and ends stderr with "took SECONDS maxrss_kb KB" (its own
# time and peak RSS: this wrapper's start is not counted)
_WRAP = ("import resource,subprocess,sys,time\n"
         "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True,text=True)\n"
         "dt=time.perf_counter()-t\n"
         "sys.stdout.write(p.stdout);sys.stderr.write(p.stderr)\n"
         "sys.stderr.write('\\ntook %.6f maxrss_kb %d\\n' % (dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
         "sys.exit(p.returncode)\n")


class Cli:
    def __init__(self, label: str, src: str | None):
        self.label, self.src = label, src
        self.env = dict(os.environ)
        if src:
            self.env["PYTHONPATH"] = src

    def run(self, *args: str) -> tuple[float, int]:
        """(seconds, peak RSS in KB) of `bpfgate ARGS` (command()) importing this CLI's tree."""
        _dt, res = timed([sys.executable, "-c", _WRAP, *command(), *args], self.env)
        last = res.stderr.strip().rsplit("\n", 1)[-1].split()
        return float(last[1]), int(last[3])


def stat(xs: list[float], unit: str = "s", scale: float = 1.0) -> str:
    v = [x * scale for x in xs]
    d = 0 if scale == 1000 else (2 if max(v) < 10 else 1)
    return f"{statistics.median(v):.{d}f} {unit} ({min(v):.{d}f}-{max(v):.{d}f})"


def measure_cli(cli: Cli, ns: str, dev: str, files: dict[str, str], reps: int, free: list[str]) -> dict[str, list]:
    r: dict[str, list] = {k: [] for k in ("apply", "apply_rss", "apply_json", "reapply", "change10", "change10_rss",
                                           "add", "del", "rules", "rules_rss", "rules_fresh")}
    for i in range(reps):   # the same policy as JSON, as a script writes it
        subprocess.run([sys.executable, "-m", "bpfgate", "policy", "remove", "--netns", ns], env=cli.env,
                       capture_output=True)
        r["apply_json"].append(cli.run("apply", "--netns", ns, files["json"])[0])
        print(f"  {cli.label} apply JSON #{i + 1}: {r['apply_json'][-1]:.2f} s", flush=True)
    for i in range(reps):
        subprocess.run([sys.executable, "-m", "bpfgate", "policy", "remove", "--netns", ns], env=cli.env,
                       capture_output=True)
        dt, rss = cli.run("apply", "--netns", ns, files["a"])
        r["apply"].append(dt)
        r["apply_rss"].append(rss / 1024)
        r["rules_fresh"].append(cli.run("rules", "--netns", ns, "--json")[0])
        print(f"  {cli.label} apply #{i + 1}: {dt:.2f} s, {rss / 1024:.0f} MB; then rules --json "
              f"{r['rules_fresh'][-1]:.2f} s", flush=True)
    for i in range(reps):
        r["reapply"].append(cli.run("apply", "--netns", ns, files["a"])[0])
        print(f"  {cli.label} reapply #{i + 1}: {r['reapply'][-1]:.2f} s", flush=True)
    for i in range(reps):
        dt, rss = cli.run("apply", "--netns", ns, files["b" if i % 2 == 0 else "a"])
        r["change10"].append(dt)
        r["change10_rss"].append(rss / 1024)
        print(f"  {cli.label} change10 #{i + 1}: {dt:.2f} s, {rss / 1024:.0f} MB", flush=True)
    for i in range(reps):
        r["add"].append(cli.run("rule", "add", f"bench{i}", "--dev", dev, "--netns", ns, "--src",
                                free[i], "--action", "drop")[0])
        r["del"].append(cli.run("rule", "del", f"bench{i}", "--dev", dev, "--netns", ns)[0])
        print(f"  {cli.label} rule add/del #{i + 1}: {r['add'][-1]:.2f} / {r['del'][-1]:.2f} s", flush=True)
    for i in range(reps):
        dt, rss = cli.run("rules", "--netns", ns, "--json")
        r["rules"].append(dt)
        r["rules_rss"].append(rss / 1024)
        print(f"  {cli.label} rules --json #{i + 1}: {dt:.2f} s", flush=True)
    subprocess.run([sys.executable, "-m", "bpfgate", "policy", "remove", "--netns", ns], env=cli.env,
                   capture_output=True)
    return r


def free_prefixes(nets: list, n: int) -> list[str]:
    """n IPv4 /24s that overlap none of the policy's prefixes (a set merges overlapping ones)."""
    v4 = [(int(p.network_address), int(p.broadcast_address)) for p in nets if p.version == 4]
    rng, out = random.Random(7), []
    while len(out) < n:
        lo = rng.getrandbits(24) << 8
        if not any(a <= lo + 255 and lo <= b for a, b in v4):
            out.append(f"{ipaddress.IPv4Address(lo)}/24")
    return out


def measure_nft(ns: str, dev: str, path: str, rules_path: str, reps: int, free: list[str]) -> dict[str, list]:
    nft = ["ip", "netns", "exec", ns, "nft"]
    r: dict[str, list] = {"apply": [], "add": [], "del": [], "apply_rules": []}
    for _ in range(reps):
        subprocess.run(nft + ["delete", "table", "inet", "bgbench"], capture_output=True)
        r["apply_rules"].append(timed(nft + ["-f", rules_path])[0])
        subprocess.run(nft + ["delete", "table", "inet", "bgbench"], capture_output=True)
        r["apply"].append(timed(nft + ["-f", path])[0])
    for i in range(reps):
        elem = ["inet", "bgbench", "b4", f"{{ {free[i]} }}"]
        r["add"].append(timed(nft + ["add", "element", *elem])[0])
        r["del"].append(timed(nft + ["delete", "element", *elem])[0])
    subprocess.run(nft + ["delete", "table", "inet", "bgbench"], capture_output=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cli", action="append", default=[], metavar="LABEL=SRC",
                    help="a bpfgate source tree to measure (PYTHONPATH); default: this checkout as 'now'")
    args = ap.parse_args()
    clis = [Cli(*c.split("=", 1)) for c in args.cli] or [Cli("now", None)]
    header(f"control plane end to end, {args.rules} rules, {args.reps} reps")
    nets = prefixes(args.rules)
    changed = list(nets)
    extra = prefixes(args.rules + 10, seed=2)[-10:]
    for j, i in enumerate(range(0, args.rules, max(args.rules // 10, 1))[:10]):
        changed[i] = extra[j] if extra[j] not in set(nets) else changed[i]
    with Sandbox() as sb, tempfile.TemporaryDirectory() as tmp:
        fw, peer = sb.host("fw"), sb.host("peer")
        link = sb.link(fw, peer)
        dev, ns = link.end(fw).name, fw.netns
        files = {}
        for name, ps in (("a", nets), ("b", changed)):
            files[name] = os.path.join(tmp, f"{name}.yaml")
            with open(files[name], "w") as f:
                f.write(policy_text(dev, ps))
        files["json"] = os.path.join(tmp, "a.json")
        with open(files["json"], "w") as f:
            json.dump(yaml.load(policy_text(dev, nets), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), f)
        nft_path, nft_rules = os.path.join(tmp, "sets.nft"), os.path.join(tmp, "rules.nft")
        with open(nft_path, "w") as f:
            f.write(nft_text(nets) % dev)
        with open(nft_rules, "w") as f:
            f.write(nft_rules_text(nets) % dev)
        elems = sum(1 for _ in ipaddress.collapse_addresses(p for p in nets if p.version == 4)) + sum(
            1 for _ in ipaddress.collapse_addresses(p for p in nets if p.version == 6))
        print(f"# policy file {os.path.getsize(files['a']) / 1e6:.1f} MB, {len(nets)} rules; nft file "
              f"{os.path.getsize(nft_path) / 1e6:.1f} MB, {elems} set elements (collapsed)")
        free = free_prefixes(nets, args.reps)
        peer_r = measure_nft(ns, dev, nft_path, nft_rules, args.reps, free)
        print(f"  nft -f: {stat(peer_r['apply'])}; as rules: {stat(peer_r['apply_rules'])}", flush=True)
        results: dict[str, dict[str, list]] = {c.label: {} for c in clis}
        for r in range(args.reps):   # rounds of every checkout, the first one rotating: on this machine kind
            # whichever runs second is slower on several rows (memory reclaim, caches), so none is always second
            for c in clis[r % len(clis):] + clis[:r % len(clis)]:
                for key, vals in measure_cli(c, ns, dev, files, 1, free[r:r + 1]).items():
                    results[c.label].setdefault(key, []).extend(vals)
        peer_r2 = measure_nft(ns, dev, nft_path, nft_rules, args.reps, free)   # the peer again, after: the machine's load drifts
    nft_apply, nft_rules_apply = peer_r["apply"] + peer_r2["apply"], peer_r["apply_rules"] + peer_r2["apply_rules"]
    nft_add, nft_del = peer_r["add"] + peer_r2["add"], peer_r["del"] + peer_r2["del"]
    print()
    labels = list(results)
    print("| operation | " + " | ".join(f"bpfgate {lb}" for lb in labels) + " | nft | " +
          " | ".join(f"{lb} / nft" for lb in labels) + " |")
    print("|---" * (2 + 2 * len(labels)) + "|")
    rows = [("apply, fresh attach", "apply", nft_apply),
            ("apply, fresh attach (peer: nft -f of the rules, one per prefix)", "apply", nft_rules_apply),
            ("apply, fresh attach, the file as JSON", "apply_json", nft_apply),
            ("apply again, no change", "reapply", None), ("apply, 10 rules changed", "change10", None), ("rule add", "add", nft_add),
            ("rule del", "del", nft_del), ("rules --json", "rules", None),
            ("rules --json, first after a fresh apply", "rules_fresh", None)]
    for title, key, peer_v in rows:
        cells = [stat(results[lb][key]) for lb in labels]
        peer_cell = stat(peer_v, "ms", 1000) if peer_v else ""
        ratios = [f"{statistics.median(results[lb][key]) / statistics.median(peer_v):.1f}x" if peer_v else ""
                  for lb in labels]
        print(f"| {title} | " + " | ".join(cells) + f" | {peer_cell} | " + " | ".join(ratios) + " |")
    for title, key in (("peak RSS, apply", "apply_rss"), ("peak RSS, 10-rule change", "change10_rss"),
                       ("peak RSS, rules --json", "rules_rss")):
        print(f"| {title} | " + " | ".join(stat(results[lb][key], "MB", 1000 / 1000) for lb in labels) +
              " | | " + " | ".join("" for _ in labels) + " |")


if __name__ == "__main__":
    main()
