"""bpfgate: eBPF programs in the Linux network path, driven from Python."""

__version__ = "0.1.0"
