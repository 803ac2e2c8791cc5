"""TorchServe plumbing for the gateway: config file, process lifecycle, addresses.

TorchServe is in limited maintenance, so everything TorchServe-specific lives here (and in
export/mar.py); the rest of the service talks plain HTTP to the addresses below.

Findings for TorchServe 0.12.0 (checked in ts/ and the frontend jar, and by experiment):

* Worker python: `ts.model_server` passes `--python sys.executable` to the Java frontend, which
  overrides the `python=` property. We therefore launch `<our python> -m ts.model_server`, so the
  workers run this interpreter (and see the editable semgen/serving/export installs). The worker
  environment is ours plus PYTHONPATH=<unpacked model dir>; the handler is imported by file stem.
* Token auth: `disable_token_authorization=true` in config.properties (same as
  `--disable-token-auth`); otherwise a key_file.json is written to the cwd and every call needs it.
  The register/unregister model API is off too (`enable_model_api`), so models load at start.
* Isolation: the start script keeps its pid file in tempfile.gettempdir(); the Java frontend puts
  worker sockets (`.ts.sock.9000`) and unpacked .mar files (`models/<hash>/`) in java.io.tmpdir and
  always opens gRPC APIs (default ports 7070/7071). Two servers with the defaults collide, so each
  gets its own TMPDIR, -Djava.io.tmpdir and free gRPC ports. Logs go to $LOG_LOCATION and
  $METRICS_LOCATION (default ./logs of the cwd); a TS_CONFIG_FILE variable would silently replace
  --ts-config, so we drop it.
* Stopping: SIGTERM to the Java frontend (what `torchserve --stop` does) stops the workers;
  signalling the whole group makes the frontend respawn a worker on its way out, and a frontend
  that dies at start-up can leave its worker behind, so we SIGKILL the group at the end.
* Streaming: a handler calls
  `ts.protocol.otf_message_handler.send_intermediate_predict_response(ret_list, req_id_map,
  message, code, context)`, ret_list holding one item per request of the batch (req_id_map is
  usually `context.request_ids`); what `handle` returns is the last piece. The client gets one
  `Transfer-Encoding: chunked` response (status from the first piece, plus a `ts_stream_next`
  header); each piece is one HTTP chunk on the wire, but http.client's `read1()` does not keep
  chunk boundaries, so every message carries its own 8-byte big-endian length prefix.
* Failures: an exception in `handle` -> HTTP 503 {"code": 503, "type": "InternalServerException",
  "message": "Prediction failed"}; after pieces were streamed, the connection is reset instead
  (status 200 already sent, no final chunk). A worker that dies -> HTTP 500 "Worker died." and a
  new worker. A stopped or killed server resets in-flight connections; new ones are refused.
* Batching: with batchSize/maxBatchDelay in the model-config YAML, `handle(data, context)` gets a
  list of up to batchSize requests; `data[i]["body"]` is a bytearray for application/octet-stream.
  `context.get_request_header(i, name)` works but is case-sensitive (name as the client sent it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

LOOPBACK = "127.0.0.1"
_PORT_FIELDS = ("inference_port", "management_port", "metrics_port",
                "grpc_inference_port", "grpc_management_port")
_SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes; keep a margin for ".ts.sock.NNNN"


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
    log_dir: Path | None = None  # None: <folder>/logs
    java_heap: str = "1g"
    extra_properties: dict[str, str] = field(default_factory=dict)

    def with_free_ports(self) -> TorchServeSettings:
        free = iter(_free_ports(len(_PORT_FIELDS)))
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
    management_url: str
    metrics_url: str

    def healthy(self) -> bool:
        reply = _get_json(f"{self.inference_url}/ping")
        return isinstance(reply, dict) and reply.get("status") == "Healthy"

    def model_ready(self, name: str) -> bool:
        reply = _get_json(f"{self.management_url}/models/{name}")
        if not isinstance(reply, list) or not reply:
            return False
        workers = [w for version in reply for w in version.get("workers", [])]
        return bool(workers) and all(w.get("status") == "READY" for w in workers)

    def ready(self, models: list[str]) -> bool:
        return self.healthy() and all(self.model_ready(name) for name in models)


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
        "management_address": f"http://{settings.host}:{settings.management_port}",
        "metrics_address": f"http://{settings.host}:{settings.metrics_port}",
        "grpc_inference_address": settings.host,
        "grpc_inference_port": str(settings.grpc_inference_port),
        "grpc_management_address": settings.host,
        "grpc_management_port": str(settings.grpc_management_port),
        "metrics_mode": "prometheus",
        "disable_token_authorization": "true",
        "install_py_dep_per_model": "false",
        "enable_envvars_config": "false",
        "model_store": str(Path(settings.model_store).resolve()),
        "load_models": models,
        "default_workers_per_model": str(settings.workers_per_model),
        "job_queue_size": str(settings.job_queue_size),
        "default_response_timeout": str(settings.default_response_timeout),
        "python": sys.executable,  # documentation only: ts.model_server's --python wins
        "vmargs": vmargs,
        **settings.extra_properties,
    }
    path = folder / "config.properties"
    path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))
    return path


class TorchServeProcess:
    """A TorchServe we start and own: `with TorchServeProcess(settings, folder) as ts: ...`."""

    def __init__(self, settings: TorchServeSettings, folder: Path):
        self.settings = settings.with_free_ports()
        self.folder = Path(folder).resolve()
        self.log_dir = Path(settings.log_dir or self.folder / "logs").resolve()
        self.console_log = self.log_dir / "console.log"
        self._tmpdir = self.folder / "tmp"
        self._own_tmpdir = False
        self._proc: subprocess.Popen | None = None
        self._stopped = False

    @property
    def address(self) -> TorchServeAddress:
        s = self.settings
        return TorchServeAddress(
            f"http://{s.host}:{s.inference_port}",
            f"http://{s.host}:{s.management_port}",
            f"http://{s.host}:{s.metrics_port}",
        )

    @property
    def base_url(self) -> str:
        return self.address.inference_url

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 120) -> TorchServeProcess:
        if self.alive():
            return self
        ok, reason = java_available()
        if not ok:
            raise RuntimeError(f"cannot start TorchServe: {reason}")
        if len(str(self._tmpdir / ".ts.sock.65535")) > _SOCKET_PATH_MAX:
            self._tmpdir, self._own_tmpdir = Path(tempfile.mkdtemp(prefix="ts-")), True
        self._tmpdir.mkdir(parents=True, exist_ok=True)
        # a stale pid file could make the start script think we are already running, and
        # every start unpacks the archives afresh
        (self._tmpdir / ".model_server.pid").unlink(missing_ok=True)
        shutil.rmtree(self._tmpdir / "models", ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = write_config(self.settings, self.folder, java_tmpdir=self._tmpdir)
        env = {k: v for k, v in os.environ.items() if k != "TS_CONFIG_FILE"}
        env.update(LOG_LOCATION=str(self.log_dir), METRICS_LOCATION=str(self.log_dir),
                   TMPDIR=str(self._tmpdir))
        cmd = [sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
               "--model-store", str(Path(self.settings.model_store).resolve()),
               "--ts-config", str(config)]
        with open(self.console_log, "ab") as log:
            # own session/process group, so stop() can sweep up the Java frontend and its workers
            self._stopped = False
            self._proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        models = self.settings.model_names()
        deadline = time.monotonic() + timeout
        while not self.address.ready(models):
            problem = None
            if not self.alive():
                problem = f"TorchServe exited during start-up (code {self._proc.returncode})"
            elif time.monotonic() > deadline:
                problem = f"TorchServe not ready within {timeout:.0f} s (models {models})"
            if problem:
                self.stop()  # also sweeps up a worker the frontend left behind
                raise RuntimeError(f"{problem}; log {self.console_log}:\n{self.log_tail()}")
            time.sleep(0.25)
        return self

    def stop(self, timeout: float = 30) -> None:
        if self._proc is None or self._stopped:
            return
        java_pid = self._java_pid()
        with contextlib.suppress(ProcessLookupError):
            if java_pid is not None:
                os.kill(java_pid, signal.SIGTERM)
            else:
                os.killpg(self._proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() or self.ports_open():
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # SIGKILL whatever is left in the group (a worker the frontend was restarting, or all of it)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=10)
        self._stopped = True
        if self._own_tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        # leave out the access log lines, mostly our own /ping and /models polling
        return "\n".join([line for line in text.splitlines() if "ACCESS_LOG" not in line][-lines:])

    def ports_open(self) -> list[int]:
        return [p for p in self.settings.ports() if _port_open(self.settings.host, p)]

    def _java_pid(self) -> int | None:
        # ts.model_server writes the Java frontend's pid to <TMPDIR>/.model_server.pid; trust it
        # only while that process is still in our group (pids get reused)
        try:
            pid = int((self._tmpdir / ".model_server.pid").read_text().split()[0])
            return pid if os.getpgid(pid) == self._proc.pid else None
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> TorchServeProcess:
        return self if self.alive() else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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


def _get_json(url: str, timeout: float = 5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):  # URLError, HTTPError, refused, reset, not JSON
        return None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_ports(count: int) -> list[int]:
    # hold all sockets until every port is picked, so the ports differ
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
