"""``tuner dashboard``: optuna-dashboard on a study's storage, safe beside running workers.

The dashboard gets the storage from :func:`tuner.storage.open_storage`, so on
SQLite its connections use the same WAL, busy timeout and ``BEGIN IMMEDIATE``
as the workers', and it serves the study's artifact store (learning curves).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna_dashboard import wsgi

from tuner.console import say, warn
from tuner.errors import TunerError
from tuner.search import load_existing_study
from tuner.spec import StudySpec
from tuner.storage import artifact_store_for, open_storage, redact_url

__all__ = ["is_loopback", "make_app", "serve"]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_app(spec: StudySpec, url: str) -> Any:
    """The dashboard's WSGI app for the spec's study; the study must exist."""
    storage = open_storage(url, spec)
    load_existing_study(spec, storage)
    return wsgi(storage, artifact_store=artifact_store_for(url, spec))


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(spec: StudySpec, url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the dashboard until Ctrl-C.

    Raises:
        TunerError: for a busy port or an address that cannot be bound; StudyError
            and StorageError for an unknown study or an unreachable storage.
    """
    app = make_app(spec, url)
    if not is_loopback(host):
        warn(
            f"listening on {host}: optuna-dashboard has no authentication, so anyone who can "
            "reach this port can read and change the study; prefer 127.0.0.1 and an SSH tunnel"
        )
    try:
        server: WSGIServer = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as e:
        if e.errno == 98 or "in use" in str(e):
            raise TunerError(
                f"port {port} on {host} is already in use; pick another with --port"
            ) from None
        raise TunerError(f"cannot listen on {host}:{port} ({e.strerror}); check --host") from None
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    say(f"dashboard for study {spec.study.name!r} on {redact_url(url)}")
    say(f"open http://{shown}:{port}/dashboard/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("dashboard stopped")
    finally:
        server.server_close()
