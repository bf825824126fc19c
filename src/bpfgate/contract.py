"""The struct fields Python code relies on, per struct of bpf/include/bpfgate.h.

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
}
