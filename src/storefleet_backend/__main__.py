"""Entry point: `python -m storefleet_backend` serves HTTP and websocket ports in one process."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator

import uvicorn

from storefleet_backend.app import EventHub, make_http_app, make_ws_app
from storefleet_backend.config import ConfigError, load
from storefleet_backend.orders import OrderBook


class _NoProbes(logging.Filter):
    """Health probes (every second or two, from the supervisor or Docker) are not logged: they
    would be most of the log and grow it by megabytes a day."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) >= 3 and args[2] == "/health")


def _die_with_parent() -> None:
    """When a supervisor started us (`STORE_SUPERVISOR_PID`), we never outlive it: the kernel
    sends SIGTERM when it dies (Linux `PR_SET_PDEATHSIG`), and `_watch_parent` checks too."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


async def _watch_parent(expected: int, stop: Callable[[], None]) -> None:
    while os.getppid() == expected:
        await asyncio.sleep(1.0)
    print("storefleet_backend: the supervisor is gone; stopping", file=sys.stderr)
    stop()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _create_schema(book: OrderBook, attempts: int = 300) -> None:
    """The backend starts beside its database, not after it: it tries every 50 ms (15 s in
    all) until the database answers, so it is ready within one try of the database."""
    for attempt in range(attempts):
        try:
            book.create_schema()
            return
        except Exception as exc:  # the database may still be starting
            if attempt == attempts - 1:
                raise
            if attempt % 20 == 0:
                why = f"{type(exc).__name__}: {exc}"
                print(f"database not ready ({why}); retrying", file=sys.stderr)
            time.sleep(0.05)


def _tcp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets (else Nagle adds ~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _unix_socket(directory: str, name: str) -> socket.socket:
    """A unix socket `name` in `directory` (a stale one left by a previous run is replaced).
    It is bound through the folder's descriptor: a socket path is limited to 107 bytes, which a
    deep data folder would exceed."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"/proc/self/fd/{fd}/{name}")
            # the folder's mode decides who reaches it
            os.chmod(name, 0o666, dir_fd=fd)  # noqa: S103
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)


def _sockets(host: str, port: int, socket_dir: str | None, name: str) -> list[socket.socket]:
    sockets = [_tcp_socket(host, port)]
    if socket_dir:
        try:
            sockets.append(_unix_socket(socket_dir, name))
        except OSError:
            sockets[0].close()
            raise
    return sockets


async def serve() -> None:
    config = load()
    book = OrderBook(config.database_url)
    await asyncio.to_thread(_create_schema, book)
    hub = EventHub()
    binds: list[list[socket.socket]] = []
    try:
        for port, name in ((config.http_port, "http.sock"), (config.ws_port, "ws.sock")):
            binds.append(_sockets(config.bind_host, port, config.socket_dir, name))
    except OSError as exc:
        for sockets in binds:
            for sock in sockets:
                sock.close()
        print(f"storefleet_backend: cannot listen: {exc}", file=sys.stderr)
        raise SystemExit(3) from exc
    servers = [
        _Server(
            uvicorn.Config(
                make(config, book, hub),
                host=config.bind_host,
                port=port,
                log_level="info",
                ws="websockets-sansio",
            )
        )
        for make, port in ((make_http_app, config.http_port), (make_ws_app, config.ws_port))
    ]
    logging.getLogger("uvicorn.access").addFilter(_NoProbes())  # after uvicorn's log config
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    supervisor = os.environ.get("STORE_SUPERVISOR_PID", "")
    watcher = None
    if supervisor.isdigit():
        _die_with_parent()
        watcher = asyncio.create_task(_watch_parent(int(supervisor), stop))
    tasks = [
        asyncio.create_task(s.serve(sockets=sockets))
        for s, sockets in zip(servers, binds, strict=True)
    ]
    done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:  # one ended (stopped or failed to bind): end the other too
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    if watcher is not None:
        watcher.cancel()
    for task in done:
        task.result()
    if not all(s.started for s in servers):
        raise SystemExit(3)


def main() -> int:
    try:
        asyncio.run(serve())
    except ConfigError as exc:
        print(f"storefleet_backend: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
