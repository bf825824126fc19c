"""Inspection: what is hitting this host, from whom, without copying every packet to user space.

- events:   the event pipeline (ring buffers of several programs -> one stream, exact loss accounting,
            JSON form with wall-clock times); new producers register an EventKind
- syn:      SYN counter per interface and source at XDP, flood detection, expiring block list, or
            temporary drop rules in the policy engine (EngineBlocker) when one runs on the interface
- attempts: connection-attempt log at TC ingress for a live-editable port set
- metrics:  Prometheus exporter; other modules add collectors to its registry
- rules:    the policy engine seen from its pins: `log` rule events (rule_log, named), per-rule
            counters for metrics (RuleCollector) and top (RuleReader)
- flows, capture (`--rule NAME` / `--engine`: the policy engine records the packets it decides, with
            its real verdict and rule; EngineCapture), top

Submodules are imported explicitly (`from bpfgate.inspect.syn import SynCounter`): importing the
package loads nothing.
"""
