"""The sockets Granian's workers accept from, made in the master, and the open-file limit they need.

On Linux Granian 2.8 has each worker open its own `SO_REUSEPORT` listener, so the kernel spreads
new connections evenly over the workers. But a worker's listener dies with it, and the
connections queued there are reset (unless `net.ipv4.tcp_migrate_req` is on); nor can options be
set on those sockets. `GatewayServer` keeps the design and moves the sockets: the master opens one
`SO_REUSEPORT` listener per worker slot and keeps them all, and each worker (the first one and any
replacement) is handed its slot's socket, the way Granian hands out a shared socket on other
platforms (a `SocketHolder` around an inherited file descriptor). So when a worker dies, the
connections queued on its socket wait for the replacement instead of being reset, and every
accepted connection inherits the socket's options: TCP keepalive (`GATEWAY_TCP_KEEPALIVE`), so a
peer that vanished without a FIN or RST is noticed (the kernel gives up after four unanswered
probes and the worker sees the connection close), and `TCP_NODELAY` as Granian sets it. (One
socket shared by all workers was tried: the first worker to wake takes a whole burst of
connections, up to all of them, and keeps them while kept alive.)

Imported by `cli.serve` only, like Granian itself: `ollama-gateway check` does not load it.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
from typing import Any

from granian._granian import SocketHolder
from granian.server.mp import MPServer, WorkerProcess

from gateway.master import DelayedStop

# Unanswered keepalive probes after which the kernel drops a connection.
KEEPALIVE_PROBES = 4
# File descriptors a worker needs besides one per connection and one per upstream request.
_SPARE_FILES = 256


def listening_socket(host: str, port: int, backlog: int, keepalive: int) -> socket.socket:
    """A TCP socket listening on host:port in a `SO_REUSEPORT` group; `keepalive` seconds of silence
    before probes, 0 for none."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, keepalive // KEEPALIVE_PROBES))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class GatewayServer(MPServer):
    """Granian's process-per-worker server (what `granian.Granian` is on a GIL build), with one
    listening socket per worker slot, made by `listening_socket` and kept by the master."""

    def __init__(self, target: str, *, tcp_keepalive: int, shutdown_delay: float = 0.0, **options: Any) -> None:
        super().__init__(target, **options)
        self.tcp_keepalive = tcp_keepalive
        # GATEWAY_SHUTDOWN_DELAY: Granian's SIGTERM/SIGINT handler, wrapped (master.DelayedStop).
        self._delayed_stop = DelayedStop(shutdown_delay, super().signal_handler_interrupt)
        self._listeners: list[socket.socket] = []
        self._holders: list[SocketHolder] = []

    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        signum = args[0] if args else signal.SIGINT
        self._delayed_stop(signum, args[1] if len(args) > 1 else None)

    def _init_shared_socket(self) -> None:
        # Granian's socket state (server/common.py and server/mp.py, 2.8): with `_shd` set and
        # `_ssp` None a worker listens on the descriptor `_shd` holds; `_spawn_worker` sets it
        # to the slot's socket just before the worker is forked.
        port = self.bind_port
        for _ in range(self.workers):
            sock = listening_socket(self.bind_addr, port, self.backlog, self.tcp_keepalive)
            port = sock.getsockname()[1]  # port 0: the others join the first one's port
            self._listeners.append(sock)
            self._holders.append(SocketHolder(sock.fileno(), False, self.backlog))  # type: ignore[call-arg]  # (fd, uds, backlog) on Linux
        self.bind_port = port
        self._ssp = None
        self._sso = None  # Granian's own Python socket, used on Windows only
        os.register_at_fork(after_in_child=self._keep_own_listener)

    def _spawn_worker(self, idx: int, target: Any, callback_loader: Any, *rest: Any) -> WorkerProcess:
        self._shd: SocketHolder = self._holders[idx]  # type: ignore[assignment]
        worker: WorkerProcess = super()._spawn_worker(idx, target, callback_loader, *rest)
        return worker

    def _keep_own_listener(self) -> None:
        """In a worker just forked: close the other slots' sockets, so that a socket closes (and
        refuses connections) once the master and its own worker have let go of it."""
        for sock, holder in zip(self._listeners, self._holders, strict=True):
            if holder is self._shd:
                sock.detach()  # the worker's Granian listener owns the descriptor now
            else:
                sock.close()
        self._listeners = []

    def _drop_shared_socket(self) -> None:
        for sock in self._listeners:
            sock.close()
        self._listeners = []


def raise_open_file_limit(needed: int) -> str | None:
    """Raise this process's soft open-file limit to `needed` (the workers inherit it).

    Returns a warning when the hard limit is lower: then a worker runs out of descriptors before
    it reaches its connection limit, and Granian retries the accept in a loop.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        return (f"the open-file limit ({soft}) is below the {needed} descriptors a worker may need: "
                "raise `ulimit -n` or lower GATEWAY_MAX_CONNECTIONS")
    return None


def files_needed(max_connections: int, max_concurrent_upstream: int) -> int:
    """Descriptors one worker may hold: its connections, its upstream requests, and some spare."""
    return max_connections + max_concurrent_upstream + _SPARE_FILES
