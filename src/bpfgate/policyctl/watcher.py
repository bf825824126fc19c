"""The detached rollback watcher: `python -m bpfgate.policyctl.watcher PENDING_FILE` (see confirm.py)."""

import sys

from bpfgate.policyctl.confirm import watch

if __name__ == "__main__":
    sys.exit(watch(sys.argv[1]))
