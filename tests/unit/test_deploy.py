"""``deploy/`` without a container engine (CI has none): the compose file parses and wires each
hospital to only its own data and key bundle, the Dockerfile's images run as a non-root user and
install nothing at run time, the lock pins every dependency inside pyproject's ranges, the
example consortium config composes, and the entrypoints refuse unknown commands. (The
entrypoints themselves run the loopback deployment in tests/e2e/test_deployment.py.) Where the
``docker compose`` client exists, it validates the file too."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PYPROJECT = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_compose_three_parties_each_site_sees_only_its_own_data_and_keys():
    services = _compose()["services"]
    assert sorted(services) == ["coordinator", "hospital-a", "hospital-b"]
    assert services["coordinator"]["ports"] == ["9092:9092"]
    for name in ("hospital-a", "hospital-b"):
        site = services[name]
        assert site["build"]["target"] == "site" and site["depends_on"] == ["coordinator"]
        mounts = {m.split(":")[1]: m for m in site["volumes"]}
        assert mounts["/data"] == f"./data/{name}:/data:ro"
        assert mounts["/keys"] == f"./pki/sites/{name}:/keys:ro"
        assert not any("pki:" in m and "sites" not in m for m in site["volumes"])  # never the CA key
        env = _env_file(DEPLOY / site["env_file"][0])
        assert env["RETINA_SITE"] == name and env["RETINA_SUPERLINK"] == "coordinator:9092"
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())["services"]
    assert all(s["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"] for s in gpu.values())


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_the_file():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker client has no compose plugin")
    checked = subprocess.run(["docker", "compose", "-f", "compose.yaml", "-f", "compose.gpu.yaml", "config", "-q"],
                             cwd=DEPLOY, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def _stages(dockerfile: str) -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in dockerfile.splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line)
        if match:
            current = match.group(1)
            stages[current] = [line]
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_images_run_unprivileged_with_pinned_torch_and_nothing_installed_at_run_time():
    stages = _stages((DEPLOY / "Dockerfile").read_text())
    for target, entrypoint in (("coordinator", "coordinator.sh"), ("site", "site.sh")):
        lines = stages[target]
        users = [line.split()[1] for line in lines if line.startswith("USER")]
        assert users and users[-1] == "retina", target
        assert any(line == f'ENTRYPOINT ["{entrypoint}"]' for line in lines)
        assert (DEPLOY / "entrypoints" / entrypoint).stat().st_mode & 0o111
        assert any("pip install -r deploy/requirements.lock" in line for line in lines)
    for torch_stage in ("site-torch", "coordinator-torch"):
        assert any("torch==2.14.1 torchvision==0.29.1" in line for line in stages[torch_stage])
    for script in (DEPLOY / "entrypoints").glob("*.sh"):
        assert "pip" not in script.read_text(), script


def test_lock_pins_every_dependency_inside_the_pyproject_ranges():
    pinned = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
    wanted = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["tensorboard"]
    for spec in wanted:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in ("torch", "torchvision"):
            continue
        assert name in pinned, f"{name} missing from deploy/requirements.lock (make lock)"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} outside {req.specifier}"
    assert not {"pytest", "torch", "torchvision"} & set(pinned)


def test_example_consortium_config_composes():
    from shared_model.conf import compose_app

    cfg = compose_app("federation", ["+experiment=consortium"], config_dir=DEPLOY / "config" / "coordinator")
    assert (cfg.model.name, cfg.strategy.name, cfg.federation.rounds) == ("small", "fedprox", 20)
    assert cfg.eval.sets[0].path == "/eval/manifest.csv" and cfg.report.tensorboard
    with pytest.raises(FileNotFoundError, match="no such folder"):
        compose_app("federation", [], config_dir=DEPLOY / "nowhere")


@pytest.mark.parametrize("script", ["coordinator.sh", "site.sh"])
def test_entrypoints_refuse_unknown_commands(script):
    done = subprocess.run([str(DEPLOY / "entrypoints" / script), "launch-missiles"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown command 'launch-missiles'" in done.stderr


def test_site_entrypoint_names_the_missing_setting(tmp_path):
    done = subprocess.run([str(DEPLOY / "entrypoints" / "site.sh"), "join"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "RETINA_SUPERLINK" in done.stderr
