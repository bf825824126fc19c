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
