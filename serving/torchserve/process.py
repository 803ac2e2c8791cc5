"""TorchServe plumbing for the gateway: config file, process lifecycle, addresses.

TorchServe is in limited maintenance, so everything TorchServe-specific lives here (and in
export/mar.py); the rest of the service talks plain HTTP to the addresses below.

Findings for TorchServe 0.12.0 (checked in ts/ and the frontend jar, and by experiment):

* Worker python: `ts.model_server` passes `--python sys.executable` to the Java frontend, which
  overrides the `python=` property. We therefore launch `<our python> -m ts.model_server`, so the
  workers run this interpreter (and see the editable semgen/serving/export installs). The worker
  environment is ours plus PYTHONPATH=<unpacked model dir>; the handler is imported by file stem.
* Token auth (on by default in 0.12): at every start the frontend writes key_file.json (mode 0600) into
  its cwd, {"management": {"key", "expiration time"}, "inference": {...}, "API": {"key"}}; every HTTP
  and gRPC inference or management call, /ping included, then needs `Authorization: Bearer <key>` of
  its API (else HTTP 401 / gRPC PERMISSION_DENIED). Keys expire after token_expiration_min (default 60).
  The gRPC APIs cannot be turned off or put on a unix socket, so we keep tokens on (config.KeyFile).
  The register/unregister model API is off (`enable_model_api`), so models load at start.
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
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from serving.torchserve.config import (HEADS_ENV, SOCKET_PATH_MAX, KeyFile, TorchServeAddress, TorchServeSettings,
                                       java_available, port_open, write_config)

def stop_orphan(pidfile: Path) -> None:
    """Kill the TorchServe a gateway that died left behind (its process group, from the pidfile), so that a
    new one does not start beside it."""
    try:
        group = int(pidfile.read_text().split()[0])
        leader = Path(f"/proc/{group}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        leader = b""  # no pidfile, or its group is gone
    if b"serving.torchserve.watchdog" in leader:  # still ours: pids get reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


class TorchServeProcess:
    """A TorchServe we start and own: `with TorchServeProcess(settings, folder) as ts: ...`."""

    def __init__(self, settings: TorchServeSettings, folder: Path, heads_dir: Path | None = None):
        self.settings = settings.with_free_ports()
        self.heads_dir = heads_dir  # the user heads its workers serve (HEADS_ENV), the other engines' folder
        self.folder = Path(folder).resolve()
        self.log_dir = Path(settings.log_dir or self.folder / "logs").resolve()
        self.console_log = self.log_dir / "console.log"
        self._tmpdir = self.folder / "tmp"
        self._own_tmpdir = False
        self._proc: subprocess.Popen | None = None
        self._stopped = False
        self.pidfile = self.folder / "torchserve.pgid"  # the process group we run TorchServe in
        self.keys = KeyFile(self.folder / "key_file.json")  # TorchServe writes it into its cwd

    @property
    def address(self) -> TorchServeAddress:
        s = self.settings
        return TorchServeAddress(
            f"http://{s.host}:{s.inference_port}",
            f"unix:{s.management_socket}" if s.management_socket else f"http://{s.host}:{s.management_port}",
            f"http://{s.host}:{s.metrics_port}",
            self.keys,
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
        if len(str(self._tmpdir / ".ts.sock.65535")) > SOCKET_PATH_MAX:
            self._tmpdir, self._own_tmpdir = Path(tempfile.mkdtemp(prefix="ts-")), True
        self._tmpdir.mkdir(parents=True, exist_ok=True)
        self._tmpdir.chmod(0o700)  # the management socket and the workers' sockets: ours alone
        self.settings = replace(self.settings, management_socket=self._tmpdir / "mgmt.sock")
        self.settings.management_socket.unlink(missing_ok=True)  # a stale one from a TorchServe that died
        # a stale pid file could make the start script think we are already running, and
        # every start unpacks the archives afresh
        (self._tmpdir / ".model_server.pid").unlink(missing_ok=True)
        self.keys.path.unlink(missing_ok=True)  # the old keys: ready() waits for the new ones
        shutil.rmtree(self._tmpdir / "models", ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = write_config(self.settings, self.folder, java_tmpdir=self._tmpdir)
        env = {k: v for k, v in os.environ.items() if k != "TS_CONFIG_FILE"}
        env.update(LOG_LOCATION=str(self.log_dir), METRICS_LOCATION=str(self.log_dir),
                   TMPDIR=str(self._tmpdir))
        if self.heads_dir is not None:
            env[HEADS_ENV] = str(Path(self.heads_dir).resolve())
        cmd = [sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
               "--model-store", str(Path(self.settings.model_store).resolve()),
               "--ts-config", str(config)]
        stop_orphan(self.pidfile)
        with open(self.console_log, "ab") as log:
            # own session/process group, so stop() can sweep up the Java frontend and its workers
            self._stopped = False
            # through the watchdog, which kills the group when this process dies, even by SIGKILL
            watched = [sys.executable, "-m", "serving.torchserve.watchdog", str(os.getpid()), "--", *cmd]
            self._proc = subprocess.Popen(watched, cwd=self.folder, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.pidfile.write_text(f"{self._proc.pid}\n")
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
        self.pidfile.unlink(missing_ok=True)
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
        return [p for p in self.settings.ports() if port_open(self.settings.host, p)]

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


