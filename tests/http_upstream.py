"""Upstream image servers on loopback for fetch-images tests and its benchmark.

``run_nginx``: Debian's nginx serving a folder (real ETag, Last-Modified, 304, Range, If-Range),
with an access log that shows every request. ``ScriptedServer``: a small HTTP/1.1 server of our
own that behaves the same by default but can be told to misbehave, request by request (500,
429 with Retry-After, a body cut mid-way, a corrupt body, a resume at the wrong offset).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.server
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import free_port, serve_http, stop_process

LOG_FORMAT = '$request_method $uri $status $body_bytes_sent "$http_range" "$http_if_none_match"'


@dataclass
class Nginx:
    """A running nginx bound to 127.0.0.1 serving ``docroot`` (``/slow/`` is the same, rate-limited)."""

    port: int
    docroot: Path
    access_log: Path
    process: subprocess.Popen[Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """Every logged request: method, path, status, bytes, range, if_none_match."""
        rows = []
        for line in self._settled_log().splitlines():
            # nginx writes quotes inside a value as \x22, so splitting on '"' is safe.
            parts = line.split('"')
            method, path, status, sent = parts[0].split()
            rows.append({"method": method, "path": path, "status": int(status), "bytes": int(sent),
                         "range": "" if parts[1] == "-" else parts[1],
                         "if_none_match": "" if parts[3] == "-" else parts[3]})
        return rows

    def clear_log(self) -> None:
        # nginx keeps the file open in append mode; truncating it is seen at once.
        self._settled_log()
        self.access_log.write_text("")

    def _settled_log(self) -> str:
        # nginx logs a request just after its last byte is sent, so the client may be a
        # moment ahead of the log: wait until the file stops growing.
        text = self.access_log.read_text()
        while True:
            time.sleep(0.05)
            again = self.access_log.read_text()
            if again == text:
                return text
            text = again


@contextlib.contextmanager
def run_nginx(root: Path, docroot: Path, slow_rate: str = "4m") -> Iterator[Nginx]:
    """Start nginx (one process, no daemon) on a free loopback port; stop it by its pid afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    temp = root / "temp"
    temp.mkdir(exist_ok=True)
    access = root / "access.log"
    access.write_text("")
    conf = root / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    log_format apex '{LOG_FORMAT}';
    access_log {access} apex;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
        location /slow/ {{ alias {docroot}/; limit_rate {slow_rate}; }}
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    err = (root / "stderr.log").open("wb")
    # -e: the startup error log too, so nothing is written outside root (even before the config is read).
    proc = subprocess.Popen([nginx, "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)],
                            stdout=err, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(root / 'stderr.log').read_text()}"
                                   f"{(root / 'error.log').read_text() if (root / 'error.log').exists() else ''}")
            time.sleep(0.05)
        yield Nginx(port, docroot, access, proc)
    finally:
        stop_process(proc)
        err.close()


# ---- a server of our own that misbehaves on request ------------------------------------


@dataclass
class Served:
    """A file the scripted server offers, with its validators."""

    body: bytes
    etag: str
    last_modified: str


@dataclass
class Logged:
    """One request the scripted server answered."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    sent: int = 0


@dataclass
class ScriptedServer:
    """Serves files like a good server unless ``script[path]`` holds actions for the next requests.

    Actions (consumed one per request): ``("status", code)``, ``("status", code, {"Retry-After": "1"})``,
    ``("cut", n)`` (send headers, ``n`` body bytes, then drop the connection), ``("stall", n, seconds)``
    (the same, but silent for ``seconds`` before the drop), ``("corrupt",)``
    (a full body with flipped bytes), ``("wrong-range", start)`` (a 206 from ``start``),
    ``("ignore-range",)`` (a full 200 despite a Range header).
    """

    port: int = 0
    files: dict[str, Served] = field(default_factory=dict)
    script: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, path: str, body: bytes, when: float | None = None) -> Served:
        """Offer ``body`` at ``path`` with a fresh ETag and a Last-Modified of ``when`` (default now)."""
        stamp = email.utils.formatdate(when if when is not None else time.time(), usegmt=True)
        served = Served(body, '"' + hashlib.sha1(body + stamp.encode()).hexdigest()[:16] + '"', stamp)
        self.files[path] = served
        return served

    def then(self, path: str, *actions: tuple[Any, ...]) -> None:
        """Queue misbehaviour for the next requests of ``path``."""
        self.script.setdefault(path, []).extend(actions)

    def hits(self, path: str, method: str = "GET") -> list[Logged]:
        return [r for r in self.log if r.path == path and r.method == method]


def _cut(action: tuple[Any, ...] | None) -> tuple[int | None, float]:
    if action and action[0] == "cut":
        return action[1], 0.0
    if action and action[0] == "stall":
        return action[1], action[2]
    return None, 0.0


def _handler(server: ScriptedServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _reply(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False,
                   cut: int | None = None, pause: float = 0.0) -> None:
            entry = Logged(self.command, self.path, status, dict(self.headers.items()))
            server.log.append(entry)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return
            data = body if cut is None else body[:cut]
            self.wfile.write(data)
            entry.sent = len(data)
            if cut is not None:
                self.wfile.flush()
                time.sleep(pause)
                # Drop the connection mid-body, the way a broken link does.
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        def _serve(self, head: bool) -> None:
            served = server.files.get(self.path)
            action = server.script.get(self.path, [None]).pop(0) if server.script.get(self.path) else None
            if action and action[0] == "status":
                extra = action[2] if len(action) > 2 else {}
                self._reply(action[1], dict(extra), f"status {action[1]}\n".encode(), head)
                return
            if served is None:
                self._reply(404, {}, b"not found\n", head)
                return
            validators = {"ETag": served.etag, "Last-Modified": served.last_modified, "Accept-Ranges": "bytes"}
            validators = {k: v for k, v in validators.items() if v}  # a server may send no ETag
            inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
            if (inm is not None and inm == served.etag) or (inm is None and ims == served.last_modified):
                self._reply(304, validators, b"", head=True)
                return
            body = served.body
            if action and action[0] == "corrupt":
                body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
            rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
            honour = rng and (if_range is None or if_range in (served.etag, served.last_modified))
            if action and action[0] == "ignore-range":
                honour = False
            if honour and rng:
                start = int(rng.split("=")[1].split("-")[0])
                if action and action[0] == "wrong-range":
                    start = action[1]
                part = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
                self._reply(206, {**validators, **part}, body[start:], head, *_cut(action))
                return
            self._reply(200, {**validators, "Content-Length": str(len(body))}, body, head, *_cut(action))

    return Handler


@contextlib.contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """Run a ScriptedServer on a free loopback port in a thread; shut it down afterwards."""
    state = ScriptedServer()
    with serve_http(_handler(state)) as address:
        state.port = int(address.rsplit(":", 1)[1])
        yield state
