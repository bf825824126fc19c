"""The detached rollback watcher: `python -m bpfgate.policyctl.watcher PENDING_FILE` (see pending.py)."""

import sys

from bpfgate.policyctl.pending import watch

if __name__ == "__main__":
    sys.exit(watch(sys.argv[1]))
