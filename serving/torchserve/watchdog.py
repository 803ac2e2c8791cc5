"""TorchServe's launcher: runs COMMAND (TorchServe) as its child in its own process group and kills that
group when the gateway that started it is gone, even when the gateway was SIGKILLed and could not stop it:

    python -m serving.torchserve.watchdog GATEWAY_PID -- COMMAND...

It exits with COMMAND's code when COMMAND exits, so the gateway sees TorchServe's life in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5


def gateway_alive(pid: int) -> bool:
    return os.getppid() == pid  # the gateway is our parent; once it dies we are re-parented


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    gateway, command = int(argv[0]), argv[argv.index("--") + 1:]
    child = subprocess.Popen(command)  # same group, stdio, cwd and environment
    while child.poll() is None:
        if not gateway_alive(gateway):
            os.killpg(os.getpgrp(), signal.SIGKILL)  # TorchServe's frontend, its workers and this launcher
        time.sleep(POLL_S)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
