"""The deployment files are checked against what reads them: the Kubernetes manifests field by field
against the Kubernetes API's own models (the `kubernetes` Python client: every field name known, every
value of its type, required fields present), the agent's command lines against bpfgate's CLI, the
ConfigMap's policy files against the policy loader, the systemd unit's sections and commands.
No cluster runs here: nothing is deployed."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys

import kubernetes   # in the test extras
import yaml

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "deploy")
MANIFEST = os.path.join(ROOT, "kubernetes", "bpfgate-agent.yaml")
UNIT = os.path.join(ROOT, "systemd", "bpfgate-agent.service")
MODELS = {("v1", "Namespace"): "V1Namespace", ("v1", "ConfigMap"): "V1ConfigMap",
          ("apps/v1", "DaemonSet"): "V1DaemonSet"}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def strict(value, type_name: str, path: str) -> list[str]:
    """Every key a field of the model, every value of the field's type; the problems found."""
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {type_name}"]
    if type_name == "datetime":
        return []
    m = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)   # the client writes list[X] or List[X]
    if m:
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in strict(v, m.group(1), f"{path}[{i}]")]
    m = re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name)
    if m:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        inner = m.group(1) or m.group(2)
        return [p for k, v in value.items() for p in strict(v, inner, f"{path}.{k}")]
    cls = getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping"]
    by_json = {j: py for py, j in cls.attribute_map.items()}
    problems = []
    for key, v in value.items():
        if key not in by_json:
            problems.append(f"{path}.{key}: no such field in {type_name}")
            continue
        problems += strict(v, cls.openapi_types[by_json[key]], f"{path}.{key}")
    return problems


def docs() -> list[dict]:
    with open(MANIFEST) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def daemonset() -> dict:
    return next(d for d in docs() if d["kind"] == "DaemonSet")


def test_manifests_match_the_kubernetes_models():
    api = kubernetes.client.ApiClient()
    kinds = []
    for d in docs():
        model = MODELS[(d["apiVersion"], d["kind"])]
        assert strict(d, model, d["kind"]) == []
        obj = api._ApiClient__deserialize(d, model)   # the client's own decoding: required fields present
        assert obj.metadata.name
        kinds.append(d["kind"])
    assert sorted(kinds) == ["ConfigMap", "DaemonSet", "Namespace"]


def test_strict_check_catches_a_misspelled_field():
    d = daemonset()
    d["spec"]["template"]["spec"]["hostNetwrok"] = True
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9465"
    problems = strict(d, "V1DaemonSet", "DaemonSet")
    assert any("hostNetwrok: no such field" in p for p in problems)
    assert any("containerPort: '9465' is not int" in p for p in problems)


def _cli_accepts(args: list[str]) -> subprocess.CompletedProcess:
    """The arguments parse (names and values of the options) without running anything: --help last."""
    return subprocess.run([sys.executable, "-m", "bpfgate.cli.main", *args, "--help"], capture_output=True,
                          text=True, timeout=60)


def test_daemonset_runs_the_agent_as_the_cli_expects():
    spec = daemonset()["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    r = _cli_accepts(c["args"])
    assert r.returncode == 0 and "Usage: bpfgate agent" in r.stdout, r.stderr
    args = c["args"]
    listen_port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
    assert c["ports"][0]["containerPort"] == listen_port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": listen_port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": listen_port}
    assert spec["hostNetwork"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    for path in ("/sys/fs/bpf", "/sys/kernel/btf", "/sys/fs/cgroup", "/run/bpfgate"):
        assert path in mounts, f"{path} is not mounted"
    policy_dir = args[args.index("--policy-dir") + 1]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts[policy_dir]]["configMap"]["name"] == "bpfgate-policies"
    assert {"BPF", "NET_ADMIN"} <= set(c["securityContext"]["capabilities"]["add"])


def test_configmap_policies_load():
    from bpfgate.policyctl.export import load_policies

    cm = next(d for d in docs() if d["kind"] == "ConfigMap")
    assert cm["data"]
    for name, text in cm["data"].items():
        assert name.endswith((".yaml", ".yml", ".json"))
        assert load_policies(text, name)


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/bpfgate") and argv[1] == "agent"
    r = _cli_accepts(argv[1:])
    assert r.returncode == 0, r.stderr
    assert unit["Service"]["ExecReload"].endswith("-HUP $MAINPID")   # the agent reconciles at once on SIGHUP
    assert "CAP_BPF" in unit["Service"]["AmbientCapabilities"]
