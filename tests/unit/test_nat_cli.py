"""`bpfgate nat add` / `lb add` / `lb backend` bad input through the real entry point: one usage line naming the
option the user typed (not the policy file's field), exit 2, refused before any interface is looked up (the
device below does not exist: reaching it would say so instead)."""

from __future__ import annotations

import pytest

from bpfgate.cli import main
from bpfgate.nat.rules import MAX_WEIGHT

DEV = "nosuch0"
VIP = ["--vip", "198.18.0.1:80", "--proto", "tcp"]


def run(capsys, *argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main.run(list(argv))
    _out, err = capsys.readouterr()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return e.value.code, err.strip()


@pytest.mark.parametrize("argv, option, reason", [
    (["nat", "add", DEV, "r1", "--dnat", "198.18.0.1:80", "--proto", "tcp", "--to", "bad"],
     "'--to'", "'bad' is not an IPv4 or IPv6 address"),
    (["nat", "add", DEV, "r1", "--dnat", "198.18.0.1:99999", "--proto", "tcp", "--to", "198.18.0.2"],
     "'--dnat'", "port '99999' is not 1..65535"),
    (["nat", "add", DEV, "r1", "--snat", "198.18.0.0/24", "--to", "198.18.0.1:5"], "'--to'", "no port here"),
    (["nat", "add", DEV, "r1", "--snat", "nonsense", "--to", "198.18.0.1"], "'--snat'", "not an address or prefix"),
    (["nat", "add", DEV, "r1", "--snat", "198.18.0.0/24", "--to", "198.18.0.1", "--ports", "9-1"], "'--ports'",
     "not a port range"),
    (["nat", "add", DEV, "a b", "--snat", "198.18.0.0/24", "--to", "198.18.0.1"], "'NAME'", "name 'a b'"),
    (["lb", "add", DEV, "s1", "--vip", "198.18.0.1", "--proto", "tcp"], "'--vip'", "has no port"),
    (["lb", "add", DEV, "s1", *VIP, "--table-size", "100"], "'--table-size'", "100 is not a prime"),
    (["lb", "add", DEV, "s1", *VIP, "--backend", "198.18.1.1", "--backend", "198.18.1.2@0"], "'--backend'",
     f"'198.18.1.2@0': weight 0 is not an integer 1..{MAX_WEIGHT}"),
    (["lb", "add", DEV, "s1", *VIP, "--backend", f"198.18.1.1@{MAX_WEIGHT + 1}"], "'--backend'",
     f"weight {MAX_WEIGHT + 1} is not an integer 1..{MAX_WEIGHT}"),
    (["lb", "add", DEV, "s1", *VIP, "--backend", "fd00::1"], "'--backend'", "is not IPv4 like the VIP"),
    (["lb", "backend", DEV, "s1", "198.18.1.1", "--weight", str(MAX_WEIGHT + 1)], "'--weight'",
     f"{MAX_WEIGHT + 1} is not in the range 1<=x<={MAX_WEIGHT}"),
])
def test_bad_value_names_the_option(capsys, argv, option, reason):
    code, err = run(capsys, *argv)
    assert code == 2 and f"Invalid value for {option}: " in err and reason in err, err
    assert "policy" not in err and "rule r1" not in err and "service s1" not in err, err


def test_drain_and_undrain_together_is_a_usage_error(capsys):
    code, err = run(capsys, "lb", "backend", DEV, "s1", "198.18.1.1", "--drain", "--undrain")
    assert code == 2 and "give one of --drain or --undrain" in err, err
    code, err = run(capsys, "lb", "backend", DEV, "s1", "198.18.1.1", "--undrain", "--remove")
    assert code == 2 and "--remove takes no" in err, err
