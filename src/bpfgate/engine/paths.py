"""What the control plane checks of an engine without loading it: where its maps are pinned, which maps,
and what changing it needs. Light to import (no libbpf, netlink or models): apply's no-change check
(policyctl/unchanged.py) runs on these alone."""

from __future__ import annotations

from bpfgate.cgroups import dir_name
from bpfgate.kernel import pins
from bpfgate.policy.hooks import Hook

MAPS = ("bg_cls", "bg_cls_short", "bg_cls_direct", "bg_conf", "bg_active", "bg_rules", "bg_counters", "bg_rate_rule",
        "bg_rate_src", "bg_log_rate", "bg_ct", "events", "bg_stats", "bg_pfx_top", "bg_pfx", "bg_ct_lookup_only",
        "bg_redirect_devs", "bg_redirect_stats")


def pin_dir(dev: str, hook: Hook, netns_name: str | None) -> str:
    """dev: a device name or a cgroup path (bpfgate.cgroups)."""
    return pins.pin_path("engine", netns_name or "-", dir_name(dev), Hook(hook).value)


def ready(netns: str | None, op: str) -> None:
    """Refuse up front what would otherwise fail half-way, leave a state directory behind, or read as
    "no policy is running": missing privileges, a network namespace that does not exist."""
    from bpfgate.kernel import caps
    from bpfgate.kernel import netns as _netns

    caps.require(op, caps.CAP_BPF, caps.CAP_NET_ADMIN, caps.CAP_SYS_ADMIN)
    _netns.require(op, netns)
