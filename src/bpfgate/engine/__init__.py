"""The policy engine: a compiled policy (bpfgate.policy) running in the kernel at TC or XDP.

    from bpfgate.engine import Engine
    eng = Engine.attach("eth0", "tc-ingress", hook_policy, netns_name=None, mode="tc")   # tc|libbpf|tcx|auto|native|generic
    eng.add_rule(rule, position=None); eng.delete_rule("name"); eng.replace_rule("name", rule)   # live, no reload
    eng.swap(new_hook_policy)          # atomic whole-policy swap (unchanged rules keep their counters)
    eng.counters()                     # {rule name: Counter(name, packets, bytes)}, "(default)" included
    eng.conntrack()                    # [Flow]: the interface's flow table
    eng.events(timeout)                # [RuleLogEvent] of rules with `log`
    eng.policy()                       # the running HookPolicy (rules in order, after live edits)
    eng = Engine.open("eth0", "tc-ingress", netns_name=None)   # another process: from pins + saved state
    Engine.attached(netns_name)        # [(dev, hook)]
    # capture with the verdict: pinned bg_capture_cfg + bg_capture_ring (bpfgate.inspect.capture.EngineCapture)
    eng.detach()                       # filters, the conntrack tracker, pins and saved state

Maps are pinned under /sys/fs/bpf/bpfgate/engine/<netns|->/<dev>/<hook>/, state is kept in
/run/bpfgate/engine/<netns|->/<dev>/<hook>/ (state.py). An ingress hook (tc-ingress, xdp) also gets a
conntrack-only program at tc-egress so replies of outgoing flows are `ct: established`; the hooks of one
interface share one flow table. `Engine.load(hook, test_mark=True)` gives an unattached engine for
BPF_PROG_TEST_RUN (ct_state from skb->mark, rule_id + 1 written back to the mark).
"""


from bpfgate import lazy

# imported on first use: the saved-state listing (state.py, paths.py) is read by apply's no-change check,
# which would otherwise pay for libbpf, netlink and the compiler
_LAZY = {"Engine": "engine", "pin_dir": "paths", "Counter": "records", "Flow": "records", "RuleLogEvent": "records"}
__all__ = ["Counter", "Engine", "Flow", "RuleLogEvent", "pin_dir"]
__getattr__ = lazy.forward(__name__, _LAZY)
