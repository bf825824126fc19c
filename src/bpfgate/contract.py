"""The struct fields Python code relies on, per struct of the headers in bpf/include
(bg_common.h and one header per program family).

Layouts come from the objects' BTF at run time (kernel.btf), so offsets cannot drift; what can drift is a
name Python uses. tests/unit/test_layout.py checks every entry here against every object's BTF and checks
that the host compiler lays the header out exactly as the BPF target does (no implicit padding surprises).
Add the fields your module reads when you add a struct.
"""

CONTRACT: dict[str, tuple[str, ...]] = {
    "bg_counter": ("packets", "bytes"),
    "bg_port_key": ("port", "pad"),
    "bg_event_hdr": ("type", "len", "cpu", "ts_ns"),
    "bg_test_event": ("hdr", "seq", "pkt_len", "mark"),
    # inspection (bpfgate.inspect: events, syn, attempts)
    "bg_src_key": ("family", "addr"),
    "bg_syn_config": ("rate", "block_ns"),
    "bg_syn_total": ("syns", "blocked"),
    "bg_syn_src_key": ("ifindex", "src"),
    "bg_syn_src": ("syns", "last_ns"),
    "bg_syn_flood_event": ("hdr", "ifindex", "src", "window_syns", "rate", "block_until_ns"),
    "bg_attempt_key": ("ifindex", "port"),
    "bg_attempt_event": ("hdr", "ifindex", "family", "tcp_flags", "sport", "dport", "pkt_len", "saddr", "daddr"),
    # tcp tracing (bpfgate.trace)
    "bg_tcp_event": ("hdr", "sk", "duration_ns", "bytes_sent", "bytes_received", "cgroup_id", "saddr", "daddr",
                     "pid", "netns", "error", "sport", "dport", "family", "kind", "old_state", "new_state",
                     "owner_flags", "comm"),
    "bg_drop_event": ("hdr", "location", "saddr", "daddr", "reason", "ifindex", "netns", "pid", "len", "sport",
                      "dport", "family", "protocol", "engine_rule"),
    "bg_sock_owner": ("start_ns", "cgroup_id", "pid", "flags", "comm"),
    # policy engine (bpfgate.engine; classifier records packed by bpfgate.policy.layout)
    "bg_cls_key": ("shape", "gen", "have", "family", "proto", "tcp_flags", "icmp_type", "icmp_code", "ct_state",
                   "pad0", "vlan", "sport", "dport", "src", "dst"),
    "bg_cls_val": ("prio", "rule_id"),
    "bg_rule": ("action", "over_action", "flags", "redirect_ifindex", "mark", "log_rate", "rate", "burst"),
    "bg_shape": ("mask", "best_prio", "id", "entries"),
    "bg_conf": ("nshapes", "default_rule", "gen", "shapes"),
    "bg_bucket": ("credit", "last_ns", "lock"),
    "bg_rate_src_key": ("rule_id", "family", "addr"),
    "bg_log_bucket": ("credit", "last_ns"),
    "bg_ct_key": ("family", "proto", "sport", "dport", "src", "dst"),
    "bg_ct_entry": ("first_ns", "last_ns", "packets_orig", "bytes_orig", "packets_reply", "bytes_reply", "flags",
                    "tcp_flags_seen"),
    "bg_rule_log_event": ("hdr", "rule_id", "ifindex", "pkt_len", "action", "hook", "family", "proto", "sport",
                          "dport", "ct_state", "tcp_flags", "src", "dst"),
}
