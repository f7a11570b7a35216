"""optuna-dashboard for an lsearch storage, served by a threaded WSGI server.

The storage is opened through `lsearch.store.storage.open_storage`, so a SQLite study gets the
same WAL journal and busy timeout as its workers: the dashboard reads while they write and
never makes them fail with "database is locked" (optuna-dashboard#545). The artifact store
is the one lsearch writes checkpoints to, so kept checkpoints are listed on their trials.

The server is the standard library's WSGI server with one thread per request
(`socketserver.ThreadingMixIn`): a slow or stalled browser connection does not hold up the
others, and nothing beyond optuna-dashboard itself is needed.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import socketserver
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from lsearch.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_ARTIFACTS = "artifacts"
INSTALL_HINT = "pip install 'lsearch[dashboard]'"


def is_loopback(host: str) -> bool:
    """Whether `host` only reaches this machine (127.0.0.0/8, ::1, or a name for them).

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("[::1]")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("::"), is_loopback("192.168.1.5")
    (False, False, False)
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0].split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def exposure_warning(host: str, port: int) -> str:
    return (
        f"warning: the dashboard has no login: anyone who can reach {host}:{port} can read, "
        "edit and delete the studies in this storage; leave out --host to serve 127.0.0.1 only"
    )


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the command prints its one line and then only errors."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server with a daemon thread per request; Ctrl-C does not wait for them."""

    daemon_threads = True
    block_on_close = False

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang for seconds
        # where DNS is slow or absent; the address itself is name enough.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class _ThreadingWSGIServer6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


def listen(app: Any, host: str, port: int) -> ThreadingWSGIServer:
    """A server bound to host:port serving `app`; a port in use is a UserError."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be from 0 (any free port) to 65535 (got {port})")
    bare = host.strip("[]")
    server_class = _ThreadingWSGIServer6 if ":" in bare else ThreadingWSGIServer
    try:
        server = server_class((bare, port), _QuietHandler)
    except socket.gaierror as exc:
        raise UserError(
            f"cannot listen on {host}: unknown address ({exc.strerror}); check --host"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is already in use; choose another with --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise UserError(
                f"not allowed to listen on port {port} ({reason}); choose one above 1023 "
                "with --port"
            ) from None
        raise UserError(
            f"cannot listen on {host} port {port} ({reason}); check --host and --port"
        ) from None
    server.set_app(app)
    return server


def url_of(server: ThreadingWSGIServer) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    return f"http://{shown}:{port}/"


def open_dashboard(
    url: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    artifacts: str = DEFAULT_ARTIFACTS,
) -> ThreadingWSGIServer:
    """A bound, not yet serving, dashboard server for the storage at `url` (which must
    exist), listing the checkpoints kept in `artifacts`. Call `serve_forever()` on it."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError(f"lsearch dashboard needs optuna-dashboard: {INSTALL_HINT}") from None

    from lsearch.search.checkpoints import open_artifact_store
    from lsearch.store.storage import open_storage

    storage = open_storage(url, must_exist=True)
    try:
        store = open_artifact_store(artifacts)
    except ModuleNotFoundError as exc:
        raise UserError(
            f"artifact store {artifacts}: {exc.name} is not installed; pip install it"
        ) from None
    except OSError as exc:
        raise UserError(
            f"cannot open the artifact store {artifacts} ({exc.strerror or exc}); check --artifacts"
        ) from None
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    return listen(app, host, port)
