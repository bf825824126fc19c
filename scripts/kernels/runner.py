"""Boots Debian kernels under qemu (virtme-ng, over the host's root file system) and runs bpfgate's doctor
and kernel tests in each; prints a table per kernel. Started by `scripts/run kernels` (see its usage).
Standard library only: it runs before and outside the project's code."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VNG_VENV = ROOT / ".venv-vng"
VNG_VERSION = "1.42"
# not under /var/cache: virtme-ng hides that in the guest, and the guest loads modules from here
CACHE = Path("/var/lib/bpfgate/kernels")
RESULTS = CACHE / "runs"  # where a failed kernel's junit.xml, console log and doctor report are kept
KEPT = ("junit.xml", "console.log", "doctor.json", "pytest.rc", "pytest.args", "pytest.env")
# The guest starts from a clean environment: only these knobs of the tests and of bpfgate reach its pytest
# (from the runner's own environment), so that a developer can, e.g., scale a long test down under emulation.
FORWARDED_ENV = (
    "BG_DIFF_SCALE", "BG_DIFF_SEED",      # tests/kernel/test_engine_differential.py: frames, seed
    "BG_CRASH_TRIES", "BG_CRASH_SEED",    # tests/kernel/test_reliability_crash.py
    "BG_SWAPS",                           # tests/kernel/test_reliability_swap.py
    "BG_RESIZE_RULES",                    # tests/kernel/test_engine_resize.py
    "BPFGATE_TIME_SCALE",                 # bpfgate.sandbox.timing: waits' factor (else measured)
    "BPFGATE_AGENT_WAIT",                 # bpfgate.agent.client: how long a command waits for the agent
    "BPFGATE_DEBUG",                      # bpfgate.kernel.libbpf: libbpf's debug output
)
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ARCH_LIBS = f"/usr/lib/{os.uname().machine}-linux-gnu"


@dataclass(frozen=True)
class Kernel:
    name: str
    suite: str  # Debian suite whose linux-image-amd64 it is
    system: bool = False  # installed as a system package (the host's own distribution's kernel)


# 6.1 is Debian 12's own kernel: installed with apt like any package. The others are unpacked into CACHE
# from a private apt source list: installing them would add boot entries and mix suites on the host.
KERNELS = {k.name: k for k in (Kernel("6.1", "bookworm", system=True),
                               Kernel("6.12", "bookworm-backports"),
                               Kernel("5.10", "bullseye"))}
MUST_PASS_BY_DEFAULT = {"6.1"}
SMOKE_MARK = "smoke"
TIMEOUT_MIN = {"smoke": 25, "full": 360}  # smoke: CI's budget; full: the whole suite takes ~4-5 h under TCG


@dataclass
class Result:
    kernel: str
    doctor: str = "-"
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    minutes: float = 0.0
    ok: bool = False
    stopped: str = ""  # why the guest was stopped before it reported (by hand, or by the watchdog)
    failures: list[str] = field(default_factory=list)
    kept: Path | None = None  # the directory its junit.xml and console log were copied to


def say(msg: str) -> None:
    print(f"kernels: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


# --- what the runner needs on the host (idempotent) ---

def installed(pkg: str) -> bool:
    q = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return "install ok installed" in q.stdout


def apt_install(pkgs: list[str]) -> None:
    missing = [p for p in pkgs if not installed(p)]
    if missing:
        say(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", *missing], env=env, stdout=subprocess.DEVNULL)


def ensure_vng() -> Path:
    vng = VNG_VENV / "bin" / "vng"
    if not vng.exists():
        say(f"installing virtme-ng {VNG_VERSION} into {VNG_VENV.name}/")
        run([sys.executable, "-m", "venv", str(VNG_VENV)])
        run([str(VNG_VENV / "bin" / "pip"), "install", "-q", f"virtme-ng=={VNG_VERSION}"])
    return vng


def system_image(prefix: str) -> Path | None:
    found = sorted(Path("/boot").glob(f"vmlinuz-{prefix}.*"))
    return found[-1] if found else None


def unpack(kernel: Kernel) -> Path:
    """Unpacks `kernel.suite`'s linux-image-amd64 (image and modules) into CACHE/<name>/, once."""
    home = CACHE / kernel.name
    if home.is_dir():
        return home
    say(f"fetching {kernel.suite}'s kernel into {home}")
    apt = CACHE / f"apt-{kernel.suite}"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb [signed-by={KEYRING}] http://deb.debian.org/debian {kernel.suite} main\n")
    opts = [f"-oDir::Etc::SourceList={apt}/sources.list", "-oDir::Etc::SourceParts=-",
            f"-oDir::State::Lists={apt}/lists", f"-oDir::Cache={apt}", "-oAPT::Sandbox::User=root",
            "-oDir::State::status=/dev/null"]  # the host's installed kernel must not answer for the suite's
    run(["apt-get", *opts, "update", "-qq"])
    dep = subprocess.run(["apt-cache", *opts, "depends", "linux-image-amd64"], capture_output=True, text=True,
                         check=True).stdout
    package = next(line.split()[-1] for line in dep.splitlines() if "Depends: linux-image-" in line)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        run(["apt-get", *opts, "download", "-q", package], cwd=tmp)
        staging = Path(tmp) / "root"
        run(["dpkg-deb", "-x", next(Path(tmp).glob("*.deb")).as_posix(), staging.as_posix()])
        staging.rename(home)
    return home


def kernel_image(kernel: Kernel) -> Path:
    if kernel.system:
        apt_install(["linux-image-amd64"])
        image = system_image(kernel.name)
        if image is None:
            raise SystemExit(f"kernels: no /boot/vmlinuz-{kernel.name}.* after installing linux-image-amd64")
        return image
    return sorted(unpack(kernel).glob("boot/vmlinuz-*"))[-1]


# --- the guest ---

def hot_trees() -> list[str]:
    """Trees Python reads at every start: the interpreter's install and the checkout."""
    base = sys.base_prefix
    python = sysconfig.get_paths()["stdlib"] if base in ("/usr", "/usr/local") else base
    return [python, str(ROOT)]


def build_image(workdir: Path) -> tuple[Path, Path]:
    """An ext4 image holding copies of hot_trees() at their own paths (see guest.sh for why); the copy
    of the checkout (the stage) is returned too, to be compiled in before the image is made."""
    stage = workdir / "stage"
    stage.mkdir()
    trees = hot_trees()
    stdlib = sysconfig.get_paths()["stdlib"].lstrip("/")
    excludes = [f"--exclude={p}" for p in (f"{stdlib}/site-packages", f"{stdlib}/dist-packages", f"{stdlib}/test",
                                           f"{str(ROOT).lstrip('/')}/.git", f"{str(ROOT).lstrip('/')}/.venv-vng")]
    tar = subprocess.Popen(["tar", "-C", "/", *excludes, "-cf", "-", *(t.lstrip("/") for t in trees)],
                           stdout=subprocess.PIPE)
    run(["tar", "-C", str(stage), "-xf", "-"], stdin=tar.stdout)
    if tar.wait() != 0:
        raise SystemExit("kernels: copying the hot trees failed")
    (stage / ".trees").write_text("".join(t + "\n" for t in trees))
    return stage, workdir / "hot.img"


def make_image(stage: Path, image: Path) -> None:
    used_mb = int(subprocess.run(["du", "-sm", str(stage)], capture_output=True, text=True).stdout.split()[0])
    run(["mkfs.ext4", "-q", "-F", "-d", str(stage), str(image), f"{used_mb * 3 // 2 + 512}M"])
    shutil.rmtree(stage)


def compile_in_stage(stage: Path, pytest_args: list[str]) -> list[str]:
    """Does on the host what the guest would do at emulated speed: bytecode of src/ and pytest's rewritten
    test and plugin modules, written into the stage while it is mounted over the checkout (in a private
    mount namespace, so the paths in the bytecode are the checkout's). Returns the test files that
    `pytest_args` selects, so that the guest imports only those."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    root = shlex.quote(str(ROOT))
    script = (f"mount --bind {shlex.quote(str(stage) + str(ROOT))} {root} && cd {root} && "
              ".venv/bin/python -m compileall -q src && "
              f".venv/bin/python -m pytest -p no:cacheprovider --collect-only -q {shlex.join(pytest_args)}")
    r = subprocess.run(["unshare", "--mount", "sh", "-c", script], env=env, capture_output=True, text=True)
    return list(dict.fromkeys(line.split("::")[0] for line in r.stdout.splitlines() if "::" in line))


def forwarded_env(environ: dict[str, str]) -> dict[str, str]:
    """The allow-listed variables of `environ` the guest's pytest gets (one a line in a file: no newlines)."""
    bad = [name for name in FORWARDED_ENV if "\n" in environ.get(name, "")]
    if bad:
        raise SystemExit(f"kernels: {', '.join(bad)} holds a newline: not forwarded to the guest")
    return {name: environ[name] for name in FORWARDED_ENV if name in environ}


class Stop:
    """SIGINT/SIGTERM of the runner: the guest running then is stopped (its whole process group) and
    reported as stopped, and no further kernel boots."""

    def __init__(self) -> None:
        self.reason = ""
        self.proc: subprocess.Popen | None = None

    def __call__(self, signum: int, _frame) -> None:
        self.reason = self.reason or f"stopped by {signal.Signals(signum).name}"
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


STOP = Stop()


def boot(vng: Path, kimg: Path, hot: Path, out: Path, pytest_args: list[str], timeout_min: int) -> str:
    """Runs the guest; returns why it was stopped before it finished ("" when it was not)."""
    # the arguments go through a file: the kernel command line that carries --exec holds 2 KiB
    (out / "pytest.args").write_text("".join(a + "\n" for a in pytest_args))
    (out / "pytest.env").write_text("".join(f"{k}={v}\n" for k, v in forwarded_env(dict(os.environ)).items()))
    guest = [str(ROOT / "scripts/kernels/guest.sh"), str(out)]
    qemu = (f"-drive file={hot},if=none,id=hot,format=raw -device virtio-blk-pci,drive=hot "
            "-fsdev local,id=hostfs,path=/,security_model=none,readonly=on,multidevs=remap "
            "-device virtio-9p-pci,fsdev=hostfs,mount_tag=hostfs")
    cmd = [str(vng), "--disable-kvm", "--memory", "2G", "--run", str(kimg), "--append", "tsc=reliable",
           f"--rwdir={out}", f"--qemu-opts={qemu}", "--exec", shlex.join(guest)]
    env = dict(os.environ, PATH=f"{vng.parent}:{os.environ['PATH']}")
    # qemu writes the guest's stdout and stderr through /proc/self/fd/N: give it a pipe (a file would be
    # reopened by both and overwritten).
    # its own process group: qemu and what vng starts are stopped together, by the watchdog or by hand
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    STOP.proc = proc
    if STOP.reason:  # a signal came while it was starting
        STOP.kill()
    timed_out = threading.Event()
    watchdog = threading.Timer(timeout_min * 60, lambda: (timed_out.set(), STOP.kill()))
    watchdog.start()
    with open(out / "console.log", "wb") as log:
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            log.write(line)
    proc.wait()
    watchdog.cancel()
    STOP.proc = None
    if STOP.reason:
        say(f"{STOP.reason}: the guest was stopped")
        return STOP.reason
    if timed_out.is_set():
        say(f"no result after {timeout_min} min: the guest was stopped")
        return f"timed out after {timeout_min} min"
    return ""


def doctor_summary(path: Path) -> str:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no report"
    core = "core OK" if report.get("core_ok") else "core FAILS"
    missing = report.get("missing") or []
    return f"{core}; missing: {', '.join(missing)}" if missing else core


def read_junit(path: Path, result: Result) -> bool:
    try:
        suites = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return False
    for case in suites.iter("testcase"):
        bad = case.find("failure")
        bad = bad if bad is not None else case.find("error")
        if bad is not None:
            result.failed += 1
            cause = (bad.get("message") or "").strip().splitlines()
            result.failures.append(f"{case.get('classname')}::{case.get('name')}: {cause[0][:160] if cause else '?'}")
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.passed += 1
    return True


def judge(out: Path, result: Result) -> None:
    """Reads what the guest left in `out` into `result`: a stopped guest's partial junit.xml is counted,
    but the verdict is "stopped", not a failure of pytest."""
    result.doctor = doctor_summary(out / "doctor.json")
    got_junit = read_junit(out / "junit.xml", result)
    rc = (out / "pytest.rc").read_text().strip() if (out / "pytest.rc").exists() else "none"
    result.ok = got_junit and rc == "0" and not result.stopped
    if not result.ok and not result.failures and not result.stopped:
        result.failures.append(f"pytest exit status {rc} (see the console output above)")


def verdict(result: Result, must: set[str]) -> str:
    if result.stopped:
        return result.stopped
    if result.ok:
        return "ok"
    return "FAIL" if result.kernel in must else "fail (not required)"


def keep(out: Path, dest: Path) -> Path:
    """Copies what a guest left in `out` (the runner's temporary directory goes away) to `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (out / name).exists():
            shutil.copy2(out / name, dest / name)
    return dest


def run_kernel(vng: Path, kernel: Kernel, hot: Path, workdir: Path, pytest_args: list[str], mode: str,
               results: Path | None) -> Result:
    result = Result(kernel.name)
    kimg = kernel_image(kernel)
    out = workdir / f"out-{kernel.name}"
    out.mkdir()
    # each guest writes into its own copy of the image
    image = workdir / f"hot-{kernel.name}.img"
    run(["cp", "--sparse=always", str(hot), str(image)])
    say(f"booting {kimg} ({mode})")
    started = time.monotonic()
    result.stopped = boot(vng, kimg, image, out, pytest_args, TIMEOUT_MIN[mode])
    image.unlink()
    result.minutes = (time.monotonic() - started) / 60
    judge(out, result)
    if results or not result.ok:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        result.kept = keep(out, (results or RESULTS / stamp) / kernel.name)
    return result


def print_table(results: list[Result], must: set[str]) -> None:
    rows = [("kernel", "doctor", "passed", "failed", "skipped", "minutes", "verdict")]
    for r in results:
        rows.append((r.kernel, r.doctor, str(r.passed), str(r.failed), str(r.skipped), f"{r.minutes:.1f}",
                     verdict(r, must)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in results:
        for failure in r.failures:
            print(f"{r.kernel}: {failure}")
    for r in results:
        if r.kept:
            print(f"{r.kernel}: junit.xml and console.log kept in {r.kept}")


def parse(argv: list[str]) -> argparse.Namespace:
    pytest_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="scripts/run kernels", description="Doctor and the kernel tests inside other kernels.")
    p.add_argument("kernels", nargs="*", metavar="KERNEL", help=f"one of {', '.join(KERNELS)} (default: all)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help=f"only the tests marked '{SMOKE_MARK}' (the default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="every kernel test")
    p.add_argument("--results", type=Path, metavar="DIR",
                   help=f"keep each kernel's junit.xml and console log in DIR/KERNEL/ (default: only a failed "
                        f"kernel's, in {RESULTS}/TIME/KERNEL/)")
    args = p.parse_args(argv)
    args.mode = args.mode or "smoke"
    unknown = [k for k in args.kernels if k not in KERNELS]
    if unknown:
        p.error(f"unknown kernel {', '.join(unknown)} (known: {', '.join(KERNELS)})")
    # After `--`: pytest arguments; test paths there replace the default tests/kernel.
    args.paths = [a for a in pytest_args if not a.startswith("-") and (ROOT / a.split("::")[0]).exists()]
    args.options = (["-m", SMOKE_MARK] if args.mode == "smoke" else []) + [a for a in pytest_args if a not in args.paths]
    args.paths = args.paths or ["tests/kernel"]
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    names = args.kernels or list(KERNELS)
    must = set(args.kernels) or MUST_PASS_BY_DEFAULT  # kernels named on the command line must all pass
    apt_install(["qemu-system-x86", "busybox-static", "file", "e2fsprogs"])
    vng = ensure_vng()
    forwarded_env(dict(os.environ))  # a bad value is refused before anything is built
    CACHE.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bpfgate-kernels.", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        stage, hot = build_image(workdir)
        files = compile_in_stage(stage, args.options + args.paths)
        make_image(stage, hot)
        # the guest collects only the files holding selected tests (named files and tests stay as given)
        narrow = files and all((ROOT / p).is_dir() for p in args.paths)
        pytest_args = args.options + (files if narrow else args.paths)
        signal.signal(signal.SIGINT, STOP)
        signal.signal(signal.SIGTERM, STOP)
        for name in names:
            if STOP.reason:
                break
            results.append(run_kernel(vng, KERNELS[name], hot, workdir, pytest_args, args.mode,
                                      args.results and args.results.resolve()))
    print_table(results, must)
    if STOP.reason:
        return 130
    return 0 if all(r.ok for r in results if r.kernel in must) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
