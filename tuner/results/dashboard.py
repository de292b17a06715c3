"""``tuner dashboard``: optuna-dashboard on a study's storage, safe beside running workers.

The caller opens the storage with :func:`tuner.storages.storage.open_storage`, so on
SQLite the dashboard's connections use the same WAL, busy timeout and ``BEGIN
IMMEDIATE`` as the workers', and hands in the study's artifact store (learning
curves); this module only serves them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import warnings
from collections.abc import Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage
from optuna_dashboard import wsgi

from tuner.common.console import say, warn
from tuner.errors import TunerError

__all__ = ["address_line", "dashboard_storage", "is_loopback", "make_app", "serve"]

# Where the host publishes the dashboard (compose.yaml sets it), and set by the image itself.
PUBLIC_URL_ENV = "TUNER_PUBLIC_URL"
IN_CONTAINER_ENV = "TUNER_IN_CONTAINER"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The dashboard's importance chart (PED-ANOVA) warns in the terminal while a study has
# few trials or one parameter; the chart itself already shows equal importances then.
QUIET_WARNINGS = (
    r".*Parameter importances will be equal.*",
    r"PedAnovaImportanceEvaluator computes the importances.*",
)


def dashboard_storage(storage: BaseStorage) -> BaseStorage:
    """``storage`` as the dashboard reads it: an RDB storage behind Optuna's trial cache.

    The study page asks for all the trials again every few seconds. Given a URL,
    optuna-dashboard puts Optuna's cache in front of an RDB storage, and then a
    read after the first fetches only the trials that are new or were unfinished;
    given a storage object, as here, it does not, and every refresh of a study of
    10,000 trials read all of them again.
    """
    return optuna.storages.get_storage(storage)  # type: ignore[arg-type]


def make_app(storage: BaseStorage, artifact_store: FileSystemArtifactStore | None = None) -> Any:
    """optuna-dashboard's WSGI app over ``storage`` (one a worker would open)."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    return wsgi(dashboard_storage(storage), artifact_store=artifact_store)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    # One thread per request: a browser's idle pre-connected socket must not stall the API.
    daemon_threads = True


def _bind(host: str, port: int, app: Any) -> WSGIServer:
    """A server bound to ``host:port``, IPv4 or IPv6 as the host resolves."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise TunerError(f"cannot resolve --host {host!r} ({e.strerror}); check --host") from None
    server_class = type("_Server", (_ThreadedServer,), {"address_family": family})
    try:
        return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise TunerError(
                f"port {port} on {host} is already in use; pick another with --port"
            ) from None
        raise TunerError(f"cannot listen on {host}:{port} ({e.strerror}); check --host") from None


def address_line(
    host: str, bound: str, port: int, study_id: int, environ: Mapping[str, str]
) -> str:
    """The line that says where to open the dashboard.

    Inside a container, its host name and port mean nothing to the user: the
    address is wherever the host publishes the port, which only whoever started
    the container knows, and says in ``TUNER_PUBLIC_URL``.

    Args:
        host: the ``--host`` as given.
        bound: the address the server is bound to.
        port: the port it listens on.
        study_id: the study's id, for the study's page.
        environ: the environment, read for ``TUNER_PUBLIC_URL`` and ``TUNER_IN_CONTAINER``.

    Returns:
        ``open URL`` where the URL is known, else where the server listens.
    """
    page = f"/dashboard/studies/{study_id}"
    if public := environ.get(PUBLIC_URL_ENV):
        return f"open {public.rstrip('/')}{page} (Ctrl-C to stop)"
    if environ.get(IN_CONTAINER_ENV):
        shown = f"[{bound}]" if ":" in bound else bound
        return (
            f"listening on {shown}:{port} inside the container; open {page} on the address "
            f"the host publishes port {port} on (set {PUBLIC_URL_ENV} to print it here)"
        )
    shown = socket.gethostname() if ipaddress.ip_address(bound).is_unspecified else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"open http://{shown}:{port}{page} (Ctrl-C to stop)"


def serve(
    storage: BaseStorage,
    study_name: str,
    *,
    artifact_store: FileSystemArtifactStore | None = None,
    where: str = "",
    host: str = "127.0.0.1",
    port: int = 8080,
) -> None:
    """Serve the dashboard on ``storage``, opened at ``study_name``'s page, until Ctrl-C.

    Args:
        storage: the opened storage; the study must exist in it.
        artifact_store: the study's trial files (learning curves), if any.
        where: the storage as the worker lines show it (a URL without its password).
        host, port: where to listen.

    Raises:
        TunerError: for a busy port or an address that cannot be bound.
    """
    study_id = storage.get_study_id_from_name(study_name)
    server = _bind(host, port, make_app(storage, artifact_store))
    bound = str(server.server_address[0])
    if not is_loopback(bound):
        advice = (
            f"publish the port on the host's loopback only (-p 127.0.0.1:{port}:{port})"
            if os.environ.get(IN_CONTAINER_ENV)
            else "prefer 127.0.0.1 and an SSH tunnel"
        )
        warn(
            f"listening on {host}: optuna-dashboard has no authentication, so anyone who can "
            f"reach this port can read and change the study; {advice}"
        )
    say(f"dashboard for study {study_name!r}" + (f" on {where}" if where else ""))
    say(address_line(host, bound, port, study_id, os.environ))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("dashboard stopped")
    finally:
        server.server_close()
