"""What runs in the Granian master process, which forks the workers: `python -m gateway.master`.

`ollama-gateway serve` checks the settings and routes.yaml (pydantic, YAML, the translators),
then replaces itself (`os.execv`, same process id) with this module, handing it the Granian
options as JSON: the master that stays resident for the gateway's whole life has imported only
Granian, the listener and this (the benchmark measures the memory of the process tree; the
check's imports alone cost the master about 15 MiB).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import shutil
import sys
import threading
from collections.abc import Callable
from typing import Any

# Sent by the master to its workers when SIGTERM arrives with a shutdown delay: /health/ready
# says 503 from then on, while the worker still serves (guard.Drain.leave).
LEAVING_SIGNAL = signal.SIGUSR1
# Packages a worker would import only because they happen to be installed, never to serve:
# structlog loads `rich` (with pygments, about 3-5 MiB a worker) for pretty console tracebacks
# when it finds it (a dev dependency brings it), though logs.py formats exceptions itself.
# Blocked in the master, before the workers are forked, they are skipped as if absent.
NOT_SERVING = ("rich",)


def without_unneeded_imports() -> None:
    """Mark `NOT_SERVING` as absent (`import rich` raises ImportError) in this process and its forks."""
    for name in NOT_SERVING:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not importable" (importlib)


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
    # A worker not yet listening for LEAVING_SIGNAL must not die of it (the default action).
    signal.signal(LEAVING_SIGNAL, signal.SIG_IGN)


def _signal_workers(signum: int) -> None:
    for child in multiprocessing.active_children():
        if child.pid is not None:
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass


class DelayedStop:
    """In the Granian master: SIGTERM first tells the workers to fail their readiness probe
    (LEAVING_SIGNAL) and only `delay` seconds later stops the server the way Granian does
    (it then stops accepting, closes idle connections and drains). A load balancer that polls
    `/health/ready` stops sending meanwhile, while every request still gets served. SIGINT
    (Ctrl-C) and a second SIGTERM stop at once.

    A worker inherits this handler when it is forked and keeps it until Granian installs its
    own, just before it serves: a stop signal in that window (the master stopping right after
    it respawned a worker) ends the worker there, instead of being taken for the master's and
    lost, which left the worker running on its own once the master was gone.
    """

    def __init__(self, delay: float, stop: Callable[..., Any]) -> None:
        self.delay = delay
        self._stop = stop
        self._timer: threading.Timer | None = None
        self._master = os.getpid()

    def __call__(self, signum: int, frame: object = None) -> None:
        if os.getpid() != self._master:  # a worker still starting: it serves nothing yet
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum != signal.SIGTERM or self._timer is not None or self.delay <= 0:
            self._stop(signum, frame)
            return
        _signal_workers(LEAVING_SIGNAL)
        self._timer = threading.Timer(self.delay, self._stop, (signum, frame))
        self._timer.daemon = True
        self._timer.start()


def run(plan: dict[str, Any]) -> None:
    """Serve `plan` (cli.serve's Granian options, as JSON values) until the server stops."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from gateway.listener import GatewayServer

    without_unneeded_imports()  # before the workers are forked
    options = dict(plan["options"])
    options["interface"] = Interfaces(options["interface"])
    options["loop"] = Loops(options["loop"])
    options["http"] = HTTPModes(options["http"])
    options["log_level"] = LogLevels(options["log_level"])
    options["http1_settings"] = HTTP1Settings(**options["http1_settings"])
    server = GatewayServer(
        plan["target"], tcp_keepalive=plan["tcp_keepalive"], shutdown_delay=plan["shutdown_delay"], **options
    )
    # SIGHUP reloads routes.yaml in every worker instead of respawning them (routing/live.py).
    server.on_startup(forward_sighup)
    try:
        server.serve()
    finally:
        # The workers' metrics files (made by cli.serve for this run; gateway/metrics.py).
        shutil.rmtree(plan["metrics_dir"], ignore_errors=True)
        # The workers' shared state without Redis (made by cli.serve; upstream/localstate.py).
        if plan.get("state_dir"):
            shutil.rmtree(plan["state_dir"], ignore_errors=True)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
