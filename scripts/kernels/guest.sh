#!/usr/bin/env bash
# Runs inside a virtme-ng guest (started by scripts/kernels/runner.py), in the checkout:
#   guest.sh OUT
# OUT is a host directory shared read-write: pytest's arguments come from OUT/pytest.args (one a line),
# the environment variables the runner forwards from OUT/pytest.env (NAME=VALUE, one a line);
# doctor.json, junit.xml and pytest.rc land there.
set -uo pipefail
out=$1
mapfile -t pytest_args <"$out/pytest.args"
if [ -f "$out/pytest.env" ]; then
	while IFS= read -r assignment; do
		[ -n "$assignment" ] && export "$assignment" && echo "guest: ${assignment%%=*} forwarded"
	done <"$out/pytest.env"
fi
at() { echo "guest: $* at $(cut -d' ' -f1 /proc/uptime) s after boot"; }

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing

# The root file system is 9p without caching: every stat and read is a round trip through an emulated
# device, and Python's imports make tens of thousands. The runner copies the Python install and the
# checkout into an ext4 image (the first virtio disk) whose metadata the guest caches: mounted over
# the same paths, writes (pytest cache, .hypothesis, pcaps) land in that throwaway image, never in the
# host checkout.
modprobe -q virtio_blk
modprobe -q ext4
mkdir -p /run/hot
mount -t ext4 /dev/vda /run/hot || { echo "guest: cannot mount the image of hot trees" >&2; exit 1; }
while read -r tree; do
	mount --bind "/run/hot$tree" "$tree"
done </run/hot/.trees
# Programs and shared libraries the tests start again and again (python's libraries, ip, tc, tshark):
# a second export of / with page caching.
mkdir -p /run/hostfs
if mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000,ro hostfs /run/hostfs; then
	for d in /usr/bin /usr/sbin /usr/lib/x86_64-linux-gnu; do
		[ -d "/run/hostfs$d" ] && mount --bind "/run/hostfs$d" "$d"
	done
fi
cd "$PWD" || exit 1 # re-enter the checkout: now the image's copy
at "mounts ready"

.venv/bin/bpfgate doctor --json >"$out/doctor.json"
at "doctor done (exit $?)"
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m pytest -p no:cacheprovider --junitxml="$out/junit.xml" "${pytest_args[@]}"
echo $? >"$out/pytest.rc"
at "pytest done"
