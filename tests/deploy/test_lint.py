"""Dockerfiles, shell scripts, docker-compose.yml and the Kubernetes manifests pass their linters and
schemas with no finding; each check is also shown to fail on a broken file, so a pass means something."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
import yaml

from service.config import Settings

from ..conftest import REPO
from .conftest import run_tool

RUFF_PATHS = ["contract", "service", "training", "tests", "bench", "scripts"]
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 450
DOCKERFILES = sorted(str(p.relative_to(REPO)) for p in (REPO / "docker").glob("Dockerfile*"))
SCRIPTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "docker").glob("*.sh"))
MANIFESTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "deploy" / "k8s").glob("*.yaml"))
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def assert_clean(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_there_are_three_dockerfiles_and_manifests():
    assert DOCKERFILES == ["docker/Dockerfile", "docker/Dockerfile.gpu", "docker/Dockerfile.train"]
    assert MANIFESTS and SCRIPTS


def test_hadolint_finds_nothing_in_the_dockerfiles():
    result = run_tool("hadolint", "--failure-threshold", "style", *DOCKERFILES)
    assert_clean(result)
    assert result.stdout.strip() == ""


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install fastapi\nRUN cd /app\n")
    result = run_tool("hadolint", "--failure-threshold", "style", str(bad))
    assert result.returncode != 0 and "DL3013" in result.stdout and "DL3003" in result.stdout


def test_shellcheck_finds_nothing_in_the_scripts():
    assert_clean(run_tool("shellcheck", *SCRIPTS))


def test_compose_file_matches_the_compose_spec_schema():
    assert_clean(run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"))


def test_compose_schema_check_catches_a_typo(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text((REPO / "docker-compose.yml").read_text().replace("    environment:", "    enviroment:"))
    result = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(bad))
    assert result.returncode != 0 and "enviroment" in result.stdout


def test_compose_cpu_by_default_gpu_and_prometheus_as_profiles():
    services = COMPOSE["services"]
    assert "profiles" not in services["spot"] and services["spot"]["build"]["dockerfile"] == "docker/Dockerfile"
    gpu = services["spot-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert services["prometheus"]["profiles"] == ["prometheus"]
    for name in ("spot", "spot-gpu", "prometheus"):
        assert services[name]["restart"] == "unless-stopped" and services[name]["healthcheck"]["test"]
    assert "/readyz" in " ".join(services["spot"]["healthcheck"]["test"])


def test_compose_passes_every_service_setting():
    """A setting added to service/config.py must be settable through docker-compose.yml too."""
    settings = {f"SPOT_{name.upper()}" for name in Settings.model_fields}
    for name in ("spot", "spot-gpu"):
        missing = settings - set(COMPOSE["services"][name]["environment"])
        assert not missing, f"add {sorted(missing)} to x-settings in docker-compose.yml"


def test_prometheus_scrapes_the_compose_services():
    config = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert job["metrics_path"] == "/metrics" and targets == ["spot:8000", "spot-gpu:8000"]
    mounted = COMPOSE["services"]["prometheus"]["volumes"][0]
    assert mounted.startswith("./docker/prometheus.yml:/etc/prometheus/prometheus.yml")


@pytest.mark.parametrize("version", ["1.33.0", "1.37.0"])
def test_kubernetes_manifests_match_the_api_schemas(version):
    assert_clean(run_tool("kubernetes-validate", "--strict", "--quiet", "-k", version, *MANIFESTS))


def test_kubernetes_validate_catches_a_typo(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "deploy/k8s/service-cpu.yaml").read_text().replace("readinessProbe", "readinesProbe"))
    result = run_tool("kubernetes-validate", "--strict", "--quiet", str(bad))
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr


def test_kubernetes_deployments_probe_health_and_readiness():
    docs = [d for m in MANIFESTS for d in yaml.safe_load_all((REPO / m).read_text())]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"spot-artifacts", "spot-artifacts-gpu"}
    for d in deployments.values():
        pod = d["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert pod["securityContext"]["runAsNonRoot"] is True
    gpu = deployments["spot-artifacts-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "SPOT_REQUIRE_GPU", "value": "true"} in gpu["env"]
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "spot-artifacts"


def test_gpu_requirements_swap_onnxruntime_for_the_same_gpu_version():
    lines = subprocess.run(
        [sys.executable, "docker/requirements.py", "serve", "--gpu"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    pinned = re.search(r'"onnxruntime==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"onnxruntime-gpu=={pinned}" in lines
    assert not [x for x in lines if x.startswith("onnxruntime==")]
    assert "fastapi" in " ".join(lines) and "torch" not in " ".join(lines)


def test_dockerignore_keeps_out_the_heavy_folders_but_not_what_the_images_copy():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "tests", "docs"} <= ignored
    for dockerfile in DOCKERFILES:
        for line in (REPO / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert source.rstrip("/").split("/")[0] not in ignored, f"{dockerfile}: {source} is ignored"
                    assert (REPO / source).exists(), f"{dockerfile}: {source} is missing"


def test_compose_build_bases_default_to_the_dockerfiles_pins():
    for service, dockerfile in (("spot", "Dockerfile"), ("spot-gpu", "Dockerfile.gpu")):
        pinned = re.search(r"^ARG BASE=(\S+)$", (REPO / "docker" / dockerfile).read_text(), re.M).group(1)
        default = re.fullmatch(r"\$\{\w+:-(.+)\}", COMPOSE["services"][service]["build"]["args"]["BASE"]).group(1)
        assert default == pinned, f"{service}: compose builds on {default}, the Dockerfile pins {pinned}"


def test_ruff_finds_nothing_in_the_code_and_its_tests():
    """pyproject's [tool.ruff] rules; `ruff check --fix` on RUFF_PATHS mends most findings."""
    assert_clean(run_tool("ruff", "check", "--no-cache", *RUFF_PATHS))


def test_ruff_catches_an_unused_import_and_a_bare_zip(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nprint(list(zip([1], [2])))\n")
    result = run_tool("ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(bad))
    assert result.returncode != 0 and "F401" in result.stdout and "B905" in result.stdout


def oversized(path) -> list[str]:
    """A module over MAX_MODULE_LINES, or a function (or method) over MAX_FUNCTION_LINES, named with its size."""
    text = path.read_text()
    found = [f"{path.name}: {len(text.splitlines())} lines"] if len(text.splitlines()) > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                found.append(f"{path.name}:{node.lineno} {node.name}(): {node.end_lineno - start + 1} lines")
    return found


def test_functions_and_modules_stay_small():
    folders = ["contract", "service", "service/routes", "training"]
    modules = sorted(p for folder in folders for p in (REPO / folder).glob("*.py"))
    assert len(modules) > 40
    found = [problem for module in modules for problem in oversized(module)]
    assert not found, f"split these (functions <= {MAX_FUNCTION_LINES} lines, modules <= {MAX_MODULE_LINES}): {found}"


def test_the_size_check_catches_a_long_function(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert oversized(long) == [f"long.py:1 f(): {MAX_FUNCTION_LINES + 1} lines"]


def imported_packages(path) -> set[str]:
    """The top-level packages a module imports (relative imports stay inside its own package: not counted)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    "package, forbidden",
    [("training", {"service"}), ("service", {"training", "torch"}), ("contract", {"service", "training", "torch"})],
)
def test_training_and_the_service_meet_only_in_the_contract(package, forbidden):
    """Training writes model folders and the service reads them through contract/ alone: neither imports the other."""
    found = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in (REPO / package).rglob("*.py")
        for name in imported_packages(path) & forbidden
    }
    assert not found, sorted(found)


def test_the_import_check_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from service.model import ExportedModel\n    from .local import x\n")
    assert imported_packages(module) == {"service"}
