"""The deployment files: docker-compose.yml is valid Compose and hardened (non-root images, no
capabilities, no default passwords, the API on localhost, one GPU per worker); the images
install the hash-checked lock and match the CUDA and Python the lock was made with.

``schemas/compose-spec.json`` is the Compose Specification's JSON schema, copied from
github.com/compose-spec/compose-spec, file schema/compose-spec.json at commit
170098ba07d9f53c383a41bfd4c5166b0a4529a6 (Apache-2.0, ``schemas/compose-spec.LICENSE``).
"""

import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

from dispatch.routing import Offer, Resources, fits

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# The services that run cssl's own images.
OURS = {name: service for name, service in SERVICES.items() if "build" in service}
WORKERS = {name: service for name, service in OURS.items() if service["build"]["dockerfile"] == "Dockerfile.worker"}
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD")


def dockerfile(name: str) -> list[str]:
    """The instructions of a Dockerfile, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_compose_file_is_valid_compose():
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(COMPOSE)


def test_the_schema_catches_a_misspelt_key():
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    broken = {**COMPOSE, "services": {**SERVICES, "api": {**SERVICES["api"], "cap_drops": ["ALL"]}}}
    with pytest.raises(jsonschema.ValidationError, match="cap_drops"):
        jsonschema.Draft7Validator(schema).validate(broken)


@pytest.mark.parametrize("name", sorted(OURS))
def test_our_containers_drop_every_capability_and_gain_no_privilege(name):
    service = OURS[name]
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
    assert "no-new-privileges:true" in service["security_opt"]
    assert not service.get("privileged") and service.get("user") in (None, "cssl", "10001", "10001:10001")


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker"])
def test_the_images_run_as_a_non_root_user_and_install_the_lock_by_hash(name):
    lines = dockerfile(name)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert lines.index(next(line for line in lines if line.startswith("USER "))) < lines.index(
        next(line for line in lines if line.startswith("CMD "))
    )
    installs = [line for line in lines if "pip install" in line]
    locked = [line for line in installs if "-r requirements" in line]
    assert locked and all("--require-hashes" in line for line in locked)
    # Nothing else is fetched unchecked: the project alone, without its dependencies or a build environment.
    assert all(line in locked or ("--no-deps" in line and "--no-build-isolation" in line) for line in installs)
    assert not any("--index-url" in line or "--extra-index-url" in line for line in lines)


def test_the_worker_image_matches_the_locked_torch_cuda_and_python():
    base = next(line for line in dockerfile("Dockerfile.worker") if line.startswith("FROM "))
    found = re.match(r"FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-", base)
    assert found, base
    # The CUDA that the installed (locked) torch wheel was built for.
    assert f"{found.group(1)}.{found.group(2)}" == torch.version.cuda
    python = f"{sys.version_info.major}.{sys.version_info.minor}"  # the lock is written from this interpreter
    assert python == "3.11"
    worker = " ".join(dockerfile("Dockerfile.worker"))
    assert f"python{python}-venv" in worker and f"python{python} -m venv" in worker
    assert dockerfile("Dockerfile.api")[0].startswith(f"FROM python:{python}-")


def test_no_password_has_a_default():
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, secret
        assert all(use.startswith(":?") for use in uses), (secret, uses)  # required, never ":-default"
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    command = SERVICES["redis"]["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    env = COMPOSE["x-cssl-env"]
    assert "${POSTGRES_PASSWORD:?" in env["CSSL_DATABASE_URL"] and "${REDIS_PASSWORD:?" in env["CSSL_BROKER_URL"]


def test_only_the_tls_proxy_publishes_beyond_localhost():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            if "tls" in service.get("profiles", []):
                continue
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
    assert SERVICES["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert SERVICES["caddy"]["profiles"] == ["tls"]


def test_workers_read_the_data_read_only_and_use_the_gpus_they_reserve():
    assert WORKERS
    device_ids = []
    for name, worker in WORKERS.items():
        volumes = worker["volumes"]
        assert "data:/data:ro" in volumes and "artifacts:/artifacts" in volumes, name
        env = worker["environment"]
        offer = Offer.parse(env.get("CSSL_WORKER_QUEUES", ""), env.get("CSSL_WORKER_DEVICES", ""))
        reserved = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if not reserved:
            assert not offer.devices and not any(kind.startswith("gpu") for kind in offer.kinds), name
            continue
        [device] = reserved
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert "count" not in device and device["device_ids"], name
        # Inside the container its GPUs are numbered 0, 1, ...: the worker offers each of them.
        assert list(offer.devices) == [str(i) for i in range(len(device["device_ids"]))], name
        device_ids += device["device_ids"]
    assert len(set(device_ids)) == len(device_ids)
    assert any(line.startswith("HEALTHCHECK ") for line in dockerfile("Dockerfile.worker"))


def test_the_fleet_profile_has_two_workers_of_different_resources():
    fleet = {name: w for name, w in WORKERS.items() if "fleet" in w.get("profiles", [])}
    offers = {
        name: Offer.parse(
            w["environment"].get("CSSL_WORKER_QUEUES", ""), w["environment"].get("CSSL_WORKER_DEVICES", "")
        )
        for name, w in fleet.items()
    }
    assert len(offers) == 2 and len(set(offers.values())) == 2, offers
    # Between them and the default worker, a CPU job, a 1-GPU and a 2-GPU job each have a worker.
    everyone = [*offers.values(), Offer.parse(WORKERS["worker-gpu0"]["environment"]["CSSL_WORKER_QUEUES"], "0")]
    for resources in (Resources("cpu"), Resources("gpu", 1), Resources("gpu", 2), None):
        assert any(fits(offer, resources) for offer in everyone), resources


def test_prometheus_scrapes_the_api_and_every_worker():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    scrape, workers = config["scrape_configs"]
    api_port = SERVICES["api"]["command"][SERVICES["api"]["command"].index("--port") + 1]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == [f"api:{api_port}"]
    # Every worker service, on the port its environment gives it.
    expected = {
        f"{name}:{service['environment']['CSSL_WORKER_METRICS_PORT']}"
        for name, service in SERVICES.items()
        if name.startswith("worker")
    }
    assert set(workers["static_configs"][0]["targets"]) == expected
    mount = "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in SERVICES["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]


def test_our_images_carry_the_commit_they_were_built_from():
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        lines = dockerfile(name)
        assert "ARG CSSL_GIT_COMMIT=" in lines and "ENV CSSL_GIT_COMMIT=$CSSL_GIT_COMMIT" in lines, name
    for name, service in OURS.items():
        assert service["build"]["args"]["CSSL_GIT_COMMIT"] == "${CSSL_GIT_COMMIT:-}", name


def test_flower_watches_the_broker_behind_basic_auth_on_localhost():
    flower = SERVICES["flower"]
    assert flower["profiles"] == ["monitoring"] and flower["ports"] == ["127.0.0.1:5555:5555"]
    assert flower["environment"]["CELERY_BROKER_URL"] == COMPOSE["x-cssl-env"]["CSSL_BROKER_URL"]
    script = flower["command"][0]
    # It refuses to start without credentials rather than serve the queue to anyone.
    assert script.startswith('test -n "$$FLOWER_BASIC_AUTH" ||') and "exit 1" in script
    assert '--basic-auth="$$FLOWER_BASIC_AUTH"' in script
