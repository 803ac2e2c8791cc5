"""TorchServe's side of the wing that is not a process: settings and config.properties, its addresses,
Java, and port helpers (findings for TorchServe 0.12 in serving/torchserve/process.py)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

LOOPBACK = "127.0.0.1"
_PORT_FIELDS = ("inference_port", "management_port", "metrics_port",
                "grpc_inference_port", "grpc_management_port")
SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes; keep a margin for ".ts.sock.NNNN"
TOKEN_MINUTES = 10 * 365 * 24 * 60  # TorchServe's keys expire (default 60 min); ours live as long as the process

HEADS_ENV = "SEMGEN_HEADS_DIR"  # where the handler finds the user heads (what FitHead saved on another engine)


@dataclass
class TorchServeSettings:
    model_store: Path
    models: list[str] | str = "all"  # .mar file names (or "name=file.mar") to load at start
    host: str = LOOPBACK
    inference_port: int = 0  # 0: pick a free port
    management_port: int = 0
    metrics_port: int = 0
    # TorchServe always opens its gRPC APIs too (default 7070/7071, which a second server would
    # fail on); we don't use them, but give them free loopback ports as well
    grpc_inference_port: int = 0
    grpc_management_port: int = 0
    workers_per_model: int = 1
    job_queue_size: int = 100
    default_response_timeout: int = 120  # seconds
    # HTTP bodies TorchServe takes and sends (its default, 6.5 MB, is less than one decoded 4096x4096 image
    # our admission lets through; over it, HTTP 413)
    max_body_bytes: int = 128 * 1024 * 1024
    log_dir: Path | None = None  # None: <folder>/logs
    # the management API on a unix socket in a folder only we can enter, not on a TCP port, so that no other
    # local user can scale our models to 0 workers; its gRPC twin cannot leave TCP, so every API asks for
    # TorchServe's bearer tokens (see KeyFile)
    management_socket: Path | None = None
    java_heap: str = "1g"
    extra_properties: dict[str, str] = field(default_factory=dict)

    def with_free_ports(self) -> TorchServeSettings:
        free = iter(free_ports(len(_PORT_FIELDS)))
        return replace(self, **{f: getattr(self, f) or next(free) for f in _PORT_FIELDS})

    def ports(self) -> list[int]:
        return [getattr(self, f) for f in _PORT_FIELDS]

    def model_names(self) -> list[str]:
        # torch-model-archiver names the archive <model-name>.mar, so the stem is the model name
        if self.models == "all":
            return sorted(p.stem for p in Path(self.model_store).glob("*.mar"))
        return [m.split("=", 1)[0] if "=" in m else Path(m).stem for m in self.models]


@dataclass(frozen=True)
class TorchServeAddress:
    """Where a running TorchServe answers; use it directly to connect to one we did not start."""

    inference_url: str
    management_url: str  # http://host:port, or unix:/path of a socket
    metrics_url: str
    keys: KeyFile | None = None  # None: a TorchServe without token authorization

    def header(self, api: str) -> dict[str, str]:
        return self.keys.header(api) if self.keys else {}

    def healthy(self) -> bool:
        reply = get_json(f"{self.inference_url}/ping", headers=self.header("inference"))
        return isinstance(reply, dict) and reply.get("status") == "Healthy"

    def model_ready(self, name: str) -> bool:
        headers = self.header("management")
        reply = get_json(f"{self.management_url}/models/{name}", headers=headers) \
            if self.management_url.startswith("http") else \
            get_json_unix(self.management_url.removeprefix("unix:"), f"/models/{name}", headers=headers)
        if not isinstance(reply, list) or not reply:
            return False
        workers = [w for version in reply for w in version.get("workers", [])]
        return bool(workers) and all(w.get("status") == "READY" for w in workers)

    def ready(self, models: list[str]) -> bool:
        return self.healthy() and all(self.model_ready(name) for name in models)


class KeyFile:
    """TorchServe's key_file.json: the bearer tokens its inference and management APIs (HTTP and gRPC) ask
    for. TorchServe writes it (mode 0600) into its working folder at every start, with new keys; we re-read it
    when it changes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._stamp: int | None = None
        self._keys: dict = {}

    def token(self, api: str) -> str | None:
        """The key of `api` ("inference" or "management"); None while the file is missing or half written."""
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp != self._stamp:
                self._keys, self._stamp = json.loads(self.path.read_text()), stamp
        except (OSError, ValueError):
            return None
        key = self._keys.get(api)
        return key.get("key") if isinstance(key, dict) else None

    def header(self, api: str) -> dict[str, str]:
        token = self.token(api)
        return {"Authorization": f"Bearer {token}"} if token else {}


def write_config(
    settings: TorchServeSettings, folder: Path, java_tmpdir: Path | None = None
) -> Path:
    """Write <folder>/config.properties; the ports must be chosen already (see with_free_ports)."""
    if 0 in settings.ports():
        raise ValueError("choose the ports first: settings.with_free_ports()")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = settings.models if settings.models == "all" else ",".join(settings.models)
    vmargs = f"-Xmx{settings.java_heap} -XX:+UseSerialGC"  # serial GC: few threads on a small box
    if java_tmpdir is not None:
        vmargs += f" -Djava.io.tmpdir={java_tmpdir}"
    props = {
        "inference_address": f"http://{settings.host}:{settings.inference_port}",
        "management_address": (f"unix:{settings.management_socket}" if settings.management_socket
                               else f"http://{settings.host}:{settings.management_port}"),
        "metrics_address": f"http://{settings.host}:{settings.metrics_port}",
        "grpc_inference_address": settings.host,
        "grpc_inference_port": str(settings.grpc_inference_port),
        "grpc_management_address": settings.host,
        "grpc_management_port": str(settings.grpc_management_port),
        "metrics_mode": "prometheus",
        "disable_token_authorization": "false",  # tokens in <folder>/key_file.json (KeyFile)
        "token_expiration_min": str(TOKEN_MINUTES),
        "install_py_dep_per_model": "false",
        "enable_envvars_config": "false",
        "model_store": str(Path(settings.model_store).resolve()),
        "load_models": models,
        "default_workers_per_model": str(settings.workers_per_model),
        "job_queue_size": str(settings.job_queue_size),
        "default_response_timeout": str(settings.default_response_timeout),
        "max_request_size": str(settings.max_body_bytes),
        "max_response_size": str(settings.max_body_bytes),
        "python": sys.executable,  # documentation only: ts.model_server's --python wins
        "vmargs": vmargs,
        **settings.extra_properties,
    }
    path = folder / "config.properties"
    path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))
    return path


def java_available() -> tuple[bool, str]:
    """TorchServe 0.12 needs Java 11+; it runs $JAVA_HOME/bin/java, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        return False, "java not found (set JAVA_HOME or put Java 11+ on PATH)"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{java} -version failed: {exc}"
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return False, f"cannot read the version of {java}: {out.stderr.strip()[:200]}"
    major = int(match.group(1))
    major = int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8
    if major < 11:
        return False, f"{java} is Java {major}; TorchServe 0.12 needs 11 or newer"
    return True, f"{java} (Java {major})"


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (TorchServe's management API when it listens on one)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def get_json_unix(socket_path: str, path: str, timeout: float = 5, headers: dict | None = None):
    connection = UnixHTTPConnection(socket_path, timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        reply = connection.getresponse()
        return json.loads(reply.read()) if reply.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def get_json(url: str, timeout: float = 5, headers: dict | None = None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):  # URLError, HTTPError, refused, reset, not JSON
        return None


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_ports(count: int) -> list[int]:
    # hold all sockets until every port is picked, so the ports differ
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
