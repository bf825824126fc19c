"""The agent's policy directory, read each round: files whose bytes did not change are not parsed again
(a round every 2 s must not parse a 100k-rule file each time); a changed, new or removed file is seen."""

from __future__ import annotations

import importlib

from bpfgate.agent import desired

export = importlib.import_module("bpfgate.policyctl.export")   # the module (policyctl.export is also a function)

POLICY = "version: 1\ninterfaces: [{dev}]\nhooks:\n  tc-ingress:\n    default: allow\n    rules:\n      - name: {rule}\n        protocol: tcp\n"


def test_unchanged_files_are_not_parsed_again(tmp_path, monkeypatch):
    calls = []
    real = export.load_policies
    monkeypatch.setattr(export, "load_policies", lambda text, name: calls.append(name) or real(text, name))
    (tmp_path / "a.yaml").write_text(POLICY.format(dev="eth0", rule="one"))
    (tmp_path / "b.yaml").write_text(POLICY.format(dev="eth1", rule="two"))
    cache: dict = {}
    first = desired.read(str(tmp_path), ["eth0", "eth1"], cache)
    assert sorted(calls) == ["a.yaml", "b.yaml"] and not any(f.error for f in first)
    again = desired.read(str(tmp_path), ["eth0", "eth1"], cache)
    assert sorted(calls) == ["a.yaml", "b.yaml"]                      # nothing parsed again
    assert [(f.path, f.digest, f.keys) for f in again] == [(f.path, f.digest, f.keys) for f in first]
    (tmp_path / "a.yaml").write_text(POLICY.format(dev="eth0", rule="changed"))
    (tmp_path / "b.yaml").unlink()
    third = desired.read(str(tmp_path), ["eth0", "eth1"], cache)
    assert calls[2:] == ["a.yaml"] and [f.path for f in third] == [str(tmp_path / "a.yaml")]
    assert third[0].policies[0].hooks[next(iter(third[0].policies[0].hooks))].rules[0].name == "changed"
    assert set(cache) == {str(tmp_path / "a.yaml")}
    (tmp_path / "a.yaml").write_text("version: 1\ninterfaces: [eth0]\nhooks: {tc-ingress: {default: maybe}}\n")
    bad = desired.read(str(tmp_path), ["eth0"], cache)
    assert bad[0].error and "default" in bad[0].error


def test_a_file_changing_a_few_rules_is_read_only_where_it_changed(tmp_path, monkeypatch):
    rules = [{"name": f"r{i}", "port": 1000 + i} for i in range(200)]

    def write(rs):
        (tmp_path / "big.yaml").write_text(
            "version: 1\ninterfaces: [eth0, eth1]\nhooks:\n  tc-ingress:\n    default: allow\n    rules:\n"
            + "".join(f"      - name: {r['name']}\n        protocol: udp\n        dst_port: {r['port']}\n" for r in rs))
    write(rules)
    cache: dict = {}
    desired.read(str(tmp_path), ["eth0", "eth1"], cache)
    calls = []
    real = export.load_policies
    monkeypatch.setattr(export, "load_policies", lambda text, name: calls.append(name) or real(text, name))
    new = [dict(r) for r in rules]
    new[3]["port"] = 9   # changed
    del new[40]          # removed
    new.insert(7, {"name": "added", "port": 7})
    write(new)
    got = desired.read(str(tmp_path), ["eth0", "eth1"], cache)
    assert calls == []   # not read whole
    want = real((tmp_path / "big.yaml").read_text(), "big.yaml")
    assert [p.hooks for p in got[0].policies] == [want[0].hooks] * 2
    write(new[1:2] + new[:1] + new[2:])   # a rule moved: read whole
    moved = desired.read(str(tmp_path), ["eth0", "eth1"], cache)
    assert calls == ["big.yaml"] and [r.name for r in moved[0].policies[0].hooks[next(iter(want[0].hooks))].rules][:2] == ["r1", "r0"]


def test_a_settled_file_is_known_by_its_stat_and_a_fresh_one_read_again(tmp_path, monkeypatch):
    reads = []
    real = export.read_policy_file
    monkeypatch.setattr(export, "read_policy_file", lambda path: reads.append(path) or real(path))
    path = tmp_path / "a.yaml"
    path.write_text(POLICY.format(dev="eth0", rule="one"))
    cache: dict = {}
    desired.read(str(tmp_path), ["eth0"], cache)
    desired.read(str(tmp_path), ["eth0"], cache)
    assert len(reads) == 2   # just written: two writes in one clock tick could share a stat, so read again
    monkeypatch.setattr(desired, "SETTLED_S", -1.0)   # as if written long ago
    desired.read(str(tmp_path), ["eth0"], cache)
    first = desired.read(str(tmp_path), ["eth0"], cache)
    assert len(reads) == 3   # its stat stood for its bytes: not read, nor hashed
    path.write_text(POLICY.format(dev="eth0", rule="two"))
    second = desired.read(str(tmp_path), ["eth0"], cache)
    assert len(reads) == 4 and second[0].digest != first[0].digest
    assert second[0].policies[0].hooks[next(iter(second[0].policies[0].hooks))].rules[0].name == "two"
