"""A fake Gerrit on loopback answering the two REST calls patch-containers makes, in Gerrit's
wire format: ``)]}'``-prefixed JSON for ``GET /changes/<project~branch~id>?o=CURRENT_REVISION``,
a base64 body (``X-FYI-Content-Encoding: base64``) for ``.../revisions/<rev>/patch``, and
``Not found: <id>`` as text/plain for unknown changes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import quote, unquote, urlsplit

from conftest import serve_http


@dataclass
class FakeChange:
    project: str
    branch: str
    change_id: str
    patch: str
    status: str = "NEW"
    submitted: str | None = None  # "2018-06-11 15:23:55.000000000" (Gerrit's format, UTC)
    number: int = 1000
    patchset: int = 1
    # A hostile (or broken) Gerrit: these fields replace the real ones in the change's JSON answer.
    answer: dict[str, object] = field(default_factory=dict)
    # ... and these replace the real ones in the answer's ``revisions.<current revision>``.
    revision_answer: dict[str, object] = field(default_factory=dict)

    @property
    def revision(self) -> str:
        return hashlib.sha1(f"{self.change_id}/{self.patchset}/{self.patch}".encode()).hexdigest()


@dataclass
class FakeGerrit:
    url: str = ""
    changes: dict[str, FakeChange] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    # Scripted trouble: the next N requests answer 503 / sleep this long before answering.
    fail_next: int = 0
    delay: float = 0.0

    def add(self, change: FakeChange) -> FakeChange:
        key = f"{quote(change.project, safe='')}~{quote(change.branch, safe='')}~{change.change_id}"
        self.changes[key] = change
        return change


def _handler(gerrit: FakeGerrit) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def handle(self) -> None:
            # A client that timed out hangs up mid-answer: expected in the stall tests.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                super().handle()

        def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            gerrit.requests.append(self.path)
            if gerrit.delay:
                time.sleep(gerrit.delay)
            if gerrit.fail_next > 0:
                gerrit.fail_next -= 1
                self._send(503, b"Service Unavailable", "text/plain")
                return
            parts = urlsplit(self.path).path.split("/")
            # /changes/<id> or /changes/<id>/revisions/<rev>/patch; <id> keeps its %2F quoting.
            if len(parts) < 3 or parts[1] != "changes":
                self._send(404, b"Not found", "text/plain")
                return
            change = gerrit.changes.get(parts[2])
            if change is None:
                self._send(404, f"Not found: {unquote(parts[2])}".encode(), "text/plain; charset=UTF-8")
                return
            if len(parts) == 3:
                data = {
                    "id": parts[2], "project": change.project, "branch": change.branch,
                    "change_id": change.change_id, "subject": f"Change {change.number}",
                    "status": change.status, "_number": change.number,
                    "current_revision": change.revision,
                    "revisions": {change.revision: {"_number": change.patchset,
                                                    "ref": f"refs/changes/00/{change.number}/{change.patchset}",
                                                    **change.revision_answer}},
                }
                if change.submitted:
                    data["submitted"] = change.submitted
                data.update(change.answer)
                body = (")]}'\n" + json.dumps(data)).encode()
                self._send(200, body, "application/json; charset=utf-8")
            elif len(parts) == 6 and parts[3] == "revisions" and parts[5] == "patch" and parts[4] == change.revision:
                self._send(200, base64.b64encode(change.patch.encode("utf-8", "surrogateescape")), "text/plain; charset=ISO-8859-1",
                           {"X-FYI-Content-Encoding": "base64", "X-FYI-Content-Type": "application/mbox"})
            else:
                self._send(404, b"Not found", "text/plain")

    return Handler


@contextlib.contextmanager
def run_fake_gerrit() -> Iterator[FakeGerrit]:
    """Serve a FakeGerrit on a free 127.0.0.1 port; shut it down afterwards."""
    gerrit = FakeGerrit()
    with serve_http(_handler(gerrit)) as address:
        gerrit.url = f"http://{address}"
        yield gerrit


def git_patch(change_id: str, files: dict[str, tuple[str, str]], subject: str = "A change") -> str:
    """A ``git format-patch``-style mail with one section per file: ``{path: (old, new)}``.

    ``old``/``new`` are whole file contents; a section replaces one with the other. ``old`` ""
    makes a new file.
    """
    out = [
        "From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001\n",
        "From: Dev <dev@example.org>\n",
        "Date: Mon, 11 Jun 2018 15:23:55 +0000\n",
        f"Subject: [PATCH] {subject}\n\n",
        f"Change-Id: {change_id}\n",
        "---\n\n",
    ]
    for path, (old, new) in files.items():
        old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
        out.append(f"diff --git a/{path} b/{path}\n")
        if not old_lines:
            out += ["new file mode 100644\n", "--- /dev/null\n", f"+++ b/{path}\n",
                    f"@@ -0,0 +1,{len(new_lines)} @@\n"]
        else:
            out += [f"--- a/{path}\n", f"+++ b/{path}\n",
                    f"@@ -1,{len(old_lines)} +1,{len(new_lines)} @@\n"]
        out += ["-" + line for line in old_lines] + ["+" + line for line in new_lines]
    out.append("-- \n2.17.1\n\n")
    return "".join(out)
