"""What runs in the Granian master process, which forks the workers.

Kept apart from the app so that the master imports as little as it can: every module it loads
is resident for the gateway's whole life (issue 3 measures the memory of the process tree).
"""

from __future__ import annotations

import multiprocessing
import os
import signal


def forward_sighup() -> None:
    """In the Granian master: pass SIGHUP on to the workers, which reload routes.yaml themselves.

    Granian's own SIGHUP handler respawns every worker; a worker whose routes.yaml had become
    invalid would then fail to start. Installed by an `on_startup` hook, after Granian's
    handlers and before the workers are forked (they inherit it, and the pid check makes it a
    no-op there until their lifespan installs their own). A worker Granian forks to replace one
    that died is a `multiprocessing` child of the master like the first ones, so it is listed
    too (tests/test_hardening_sockets.py).
    """
    master = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != master:
            return
        for child in multiprocessing.active_children():
            if child.pid is not None:
                os.kill(child.pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, handler)
