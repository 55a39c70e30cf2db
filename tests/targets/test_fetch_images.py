"""fetch-images against real loopback upstreams: Debian's nginx, and a scripted server that misbehaves."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from apex_tools.core.config import Layer, resolve
from apex_tools.http.checksums import parse_sidecar
from apex_tools.http.download import Downloader, RetryPolicy
from apex_tools.http.retry import retry_after
from apex_tools.core.errors import DownloadError, ImageError
from apex_tools.http.filecache import meta_path, partial_path
from apex_tools.core.workdir import overcloud_image
from apex_tools.targets.fetch_images import TARGET, check_members, fetch_images, retry_policy
from apex_tools.core.run import RunContext, Status

from conftest import REPO
from http_upstream import Nginx, ScriptedServer, run_nginx, scripted_server

OS = "master"  # the bundled default scenario's OpenStack version
OC, IPA = "overcloud-full.tar", "ironic-python-agent.tar"
OC_MEMBERS = {"overcloud-full.qcow2": 600_000, "overcloud-full.initrd": 50_000, "overcloud-full.vmlinuz": 30_000}
IPA_MEMBERS = {"ironic-python-agent.initramfs": 200_000, "ironic-python-agent.kernel": 30_000}


def make_tar(members: dict[str, int], seed: str) -> bytes:
    """A tarball of pseudo-random files (deterministic per ``seed``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, size in members.items():
            data = (hashlib.sha256(f"{seed}/{name}".encode()).digest() * (size // 32 + 1))[:size]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_500_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def md5_line(body: bytes, name: str) -> str:
    return f"{hashlib.md5(body).hexdigest()}  {name}\n"


def publish(folder: Path, seed: str = "v1", md5: bool = True) -> dict[str, bytes]:
    """Write RDO-like artifacts (and md5 sidecars) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = {OC: make_tar(OC_MEMBERS, seed), IPA: make_tar(IPA_MEMBERS, seed)}
    for name, body in bodies.items():
        (folder / name).write_bytes(body)
        if md5:
            (folder / f"{name}.md5").write_text(md5_line(body, name))
    return bodies


def run_for(tmp_path: Path, images_url: str, *, no_fetch: bool = False, force: bool = False,
            dry_run: bool = False, **fetch: object) -> RunContext:
    """A RunContext with work and image dirs under ``tmp_path`` and fast retries."""
    data = {
        "work_dir": str(tmp_path / "work"),
        "image_dir": str(tmp_path / "images"),
        "no_fetch": no_fetch,
        "upstream": {"images_url": images_url},
        "fetch": {"tries": 3, "backoff": 0.01, "max_wait": 5.0, "read_timeout": 5.0, **fetch},
    }
    return RunContext(resolve([Layer("test", data)]).options, force=force, dry_run=dry_run)


def by_name(result) -> dict[str, tuple[str, str]]:
    return {i.name: (i.status, i.detail) for i in result.items}


@pytest.fixture
def www(tmp_path: Path) -> Path:
    return tmp_path / "www"


@pytest.fixture
def nginx(tmp_path: Path, www: Path):
    www.mkdir()
    with run_nginx(tmp_path / "nginx", www) as server:
        yield server


@pytest.fixture
def upstream():
    with scripted_server() as server:
        yield server


def serve(server: ScriptedServer, seed: str = "v1", md5: bool = True) -> dict[str, bytes]:
    bodies = {OC: make_tar(OC_MEMBERS, seed), IPA: make_tar(IPA_MEMBERS, seed)}
    for name, body in bodies.items():
        server.put(f"/{OS}/{name}", body)
        if md5:
            server.put(f"/{OS}/{name}.md5", md5_line(body, name).encode())
    return bodies


def primed(tmp_path: Path, upstream: ScriptedServer) -> str:
    """Serve the artifacts, fetch them once and forget those requests; returns the images_url."""
    serve(upstream)
    url = upstream.url + "/{os_version}/"
    fetch_images(run_for(tmp_path, url))
    upstream.log.clear()
    return url


def downloader(run: RunContext, waits: list[float]) -> Downloader:
    """The target's downloader with the waiting recorded instead of slept."""
    return Downloader(policy=retry_policy(run.options), sleep=waits.append)


# ---- the good path, against nginx ---------------------------------------------------------


def test_first_run_downloads_verifies_and_unpacks_then_a_rerun_is_one_304_per_artifact(tmp_path, nginx, www):
    bodies = publish(www / OS)
    run = run_for(tmp_path, nginx.url + "/{os_version}/")
    first = fetch_images(run)
    assert first.status is Status.CHANGED, first
    items = by_name(first)
    assert items[OC][0] == "downloaded" and "md5 verified" in items[OC][1] and "unpacked 3 files" in items[OC][1]
    folder = tmp_path / "images" / OS
    assert (folder / OC).read_bytes() == bodies[OC]
    assert overcloud_image(run.options, OS) == folder / "overcloud-full.qcow2"
    assert overcloud_image(run.options, OS).stat().st_size == OC_MEMBERS["overcloud-full.qcow2"]
    assert (folder / "ironic-python-agent.kernel").is_file()
    meta = json.loads(meta_path(folder / OC).read_text())
    assert meta["etag"] and meta["last_modified"] and meta["digests"]["md5"] == hashlib.md5(bodies[OC]).hexdigest()
    assert not list(folder.glob(".*.partial*")) and not list(folder.glob(".unpack-*"))

    nginx.clear_log()
    again = fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/"))
    assert again.status is Status.UP_TO_DATE and again.changes == ["up to date"]
    assert {i.status for i in again.items} == {"up to date"}
    log = nginx.requests()
    assert [(r["path"], r["status"]) for r in log] == [(f"/{OS}/{OC}", 304), (f"/{OS}/{IPA}", 304)]
    assert all(r["if_none_match"] for r in log)


def test_changed_upstream_is_downloaded_and_unpacked_again(tmp_path, nginx, www):
    publish(www / OS, "v1")
    fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/"))
    new = publish(www / OS, "v2")
    later = time.time() + 120
    os.utime(www / OS / OC, (later, later))
    # An older date is a change too: Apex compared dates ("newer than my copy?") and kept stale files.
    os.utime(www / OS / IPA, (1_600_000_000, 1_600_000_000))
    nginx.clear_log()
    result = fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/"))
    assert result.status is Status.CHANGED
    assert by_name(result)[OC][0] == "downloaded" and by_name(result)[IPA][0] == "downloaded"
    assert any(c.startswith(f"unpacked {OC}") for c in result.changes)
    folder = tmp_path / "images" / OS
    assert (folder / OC).read_bytes() == new[OC]
    expected_qcow2 = tarfile.open(fileobj=io.BytesIO(new[OC])).extractfile("overcloud-full.qcow2").read()
    assert (folder / "overcloud-full.qcow2").read_bytes() == expected_qcow2
    statuses = [(r["path"], r["status"]) for r in nginx.requests() if not r["path"].endswith((".md5", ".sha256"))]
    assert statuses == [(f"/{OS}/{OC}", 200), (f"/{OS}/{IPA}", 200)]


def test_a_partial_left_by_an_interrupted_run_is_resumed_with_range_and_if_range(tmp_path, nginx, www):
    bodies = publish(www / OS)
    import requests

    head = requests.head(f"{nginx.url}/{OS}/{OC}", timeout=5).headers
    folder = tmp_path / "images" / OS
    folder.mkdir(parents=True)
    cut = 300_000
    partial_path(folder / OC).write_bytes(bodies[OC][:cut])
    partial_path(folder / OC).with_name(f".{OC}.partial.json").write_text(json.dumps({
        "url": f"{nginx.url}/{OS}/{OC}", "etag": head["ETag"], "last_modified": head["Last-Modified"],
        "size": len(bodies[OC]),
    }))
    result = fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/"))
    status, detail = by_name(result)[OC]
    assert status == "resumed" and detail.startswith("from 293.0 KiB of") and "md5 verified" in detail
    assert (folder / OC).read_bytes() == bodies[OC]
    tar_gets = [r for r in nginx.requests() if r["path"] == f"/{OS}/{OC}" and r["method"] == "GET"]
    assert [(r["status"], r["range"], r["bytes"]) for r in tar_gets] == [(206, f"bytes={cut}-", len(bodies[OC]) - cut)]


def test_a_partial_of_an_older_upstream_version_is_thrown_away(tmp_path, nginx, www):
    bodies = publish(www / OS)
    folder = tmp_path / "images" / OS
    folder.mkdir(parents=True)
    partial_path(folder / OC).write_bytes(b"x" * 1000)
    partial_path(folder / OC).with_name(f".{OC}.partial.json").write_text(json.dumps({
        "url": f"{nginx.url}/{OS}/{OC}", "etag": '"old-version"', "last_modified": "", "size": len(bodies[OC]),
    }))
    result = fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/"))
    assert by_name(result)[OC][0] == "downloaded"
    assert (folder / OC).read_bytes() == bodies[OC]
    tar_gets = [r for r in nginx.requests() if r["path"] == f"/{OS}/{OC}"]
    # nginx ignores the Range when If-Range names another version and sends the whole file.
    assert [(r["status"], r["range"]) for r in tar_gets] == [(200, "bytes=1000-")]


def test_a_deleted_unpacked_file_is_unpacked_again_without_downloading(tmp_path, nginx, www):
    publish(www / OS)
    fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/"))
    qcow2 = tmp_path / "images" / OS / "overcloud-full.qcow2"
    qcow2.unlink()
    stale = tmp_path / "images" / OS / f".unpack-{OC}-killed"  # left by a run killed mid-unpack
    stale.mkdir()
    (stale / "overcloud-full.qcow2").write_bytes(b"half")
    nginx.clear_log()
    result = fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/"))
    assert result.status is Status.CHANGED and by_name(result)[OC][0] == "up to date"
    assert result.changes == [f"unpacked {OC}: overcloud-full.initrd, overcloud-full.qcow2, overcloud-full.vmlinuz"]
    assert qcow2.stat().st_size == OC_MEMBERS["overcloud-full.qcow2"]
    assert not stale.exists()
    assert {r["status"] for r in nginx.requests()} == {304}


def test_dry_run_with_the_upstream_unreachable_says_so_once_and_what_a_run_would_do(tmp_path):
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/{{os_version}}/"  # nothing listens there
    planned = fetch_images(run_for(tmp_path, url, dry_run=True))
    assert planned.status is Status.PLANNED
    host = url.split("/")[2]
    assert planned.changes == [f"image server {host} unreachable: Connection refused",
                               f"a real run would download {OC}, {IPA}"]
    assert [i.status for i in planned.items] == ["planned", "planned"]
    assert not (tmp_path / "images").exists() and not (tmp_path / "work").exists()


def test_dry_run_plans_and_touches_nothing_then_says_up_to_date(tmp_path, nginx, www):
    publish(www / OS)
    planned = fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/", dry_run=True))
    assert planned.status is Status.PLANNED
    assert planned.changes == [f"{OC}: download from {nginx.url}/{OS}/{OC} (not cached)",
                               f"{IPA}: download from {nginx.url}/{OS}/{IPA} (not cached)"]
    assert not (tmp_path / "images").exists() and not (tmp_path / "work").exists()
    # One plain HEAD: is the upstream there at all (a dry run says so once when it is not)?
    assert [(r["method"], r["path"]) for r in nginx.requests()] == [("HEAD", f"/{OS}/{OC}")]
    fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/"))
    nginx.clear_log()
    again = fetch_images(run_for(tmp_path, nginx.url + "/{os_version}/", dry_run=True))
    assert again.status is Status.UP_TO_DATE
    assert [(r["method"], r["status"]) for r in nginx.requests()] == [("HEAD", 200), ("HEAD", 304), ("HEAD", 304)]
    moved = fetch_images(run_for(tmp_path, nginx.url + "/slow/{os_version}/", dry_run=True))
    assert moved.changes[0] == (f"{OC}: download from {nginx.url}/slow/{OS}/{OC} "
                                f"(cached from {nginx.url}/{OS}/{OC})")


# ---- a misbehaving upstream ---------------------------------------------------------------


def test_connection_cut_mid_body_is_resumed_from_where_it_stopped(tmp_path, upstream):
    bodies = serve(upstream)
    upstream.then(f"/{OS}/{OC}", ("cut", 100_000))
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    waits: list[float] = []
    result = fetch_images(run, downloader(run, waits))
    assert by_name(result)[OC][0] == "resumed" and by_name(result)[OC][1].startswith("from 97.7 KiB")
    assert (tmp_path / "images" / OS / OC).read_bytes() == bodies[OC]
    gets = upstream.hits(f"/{OS}/{OC}")
    assert [(g.status, g.sent) for g in gets] == [(200, 100_000), (206, len(bodies[OC]) - 100_000)]
    assert gets[1].headers["Range"] == "bytes=100000-" and gets[1].headers["If-Range"] == gets[0].headers.get(
        "If-Range", upstream.files[f"/{OS}/{OC}"].etag)
    assert waits == [0.01]


def test_a_download_that_gives_up_keeps_only_the_partial_and_the_next_run_resumes_it(tmp_path, upstream):
    bodies = serve(upstream)
    upstream.then(f"/{OS}/{OC}", ("cut", 100_000), ("cut", 50_000), ("cut", 50_000))
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    failed = fetch_images(run, downloader(run, []))
    folder = tmp_path / "images" / OS
    assert failed.status is Status.FAILED and "connection dropped after 195.3 KiB" in by_name(failed)[OC][1]
    assert "the 195.3 KiB received are kept and resumed next time" in by_name(failed)[OC][1]
    assert not (folder / OC).exists() and not (folder / "overcloud-full.qcow2").exists()
    assert partial_path(folder / OC).stat().st_size == 200_000
    upstream.log.clear()
    result = fetch_images(run_for(tmp_path, upstream.url + "/{os_version}/"))
    assert by_name(result)[OC][0] == "resumed" and by_name(result)[OC][1].startswith("from 195.3 KiB")
    assert (folder / OC).read_bytes() == bodies[OC] and not partial_path(folder / OC).exists()
    assert [(g.status, g.headers.get("Range")) for g in upstream.hits(f"/{OS}/{OC}")] == [(206, "bytes=200000-")]


def test_a_server_ignoring_range_restarts_the_file_cleanly(tmp_path, upstream):
    bodies = serve(upstream)
    upstream.then(f"/{OS}/{OC}", ("cut", 100_000), ("ignore-range",))
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    assert by_name(result)[OC][0] == "downloaded"
    assert (tmp_path / "images" / OS / OC).read_bytes() == bodies[OC]
    assert [g.status for g in upstream.hits(f"/{OS}/{OC}")] == [200, 200]


def test_a_5xx_before_a_304_does_not_cost_a_download(tmp_path, upstream):
    url = primed(tmp_path, upstream)
    upstream.then(f"/{OS}/{OC}", ("status", 503))
    run = run_for(tmp_path, url)
    result = fetch_images(run, downloader(run, []))
    assert result.status is Status.UP_TO_DATE
    assert [(g.status, "If-None-Match" in g.headers) for g in upstream.hits(f"/{OS}/{OC}")] == [(503, True),
                                                                                              (304, True)]


def test_force_downloads_and_unpacks_again(tmp_path, upstream):
    url = primed(tmp_path, upstream)
    result = fetch_images(run_for(tmp_path, url, force=True))
    assert result.status is Status.CHANGED
    assert [i.status for i in result.items] == ["downloaded", "downloaded"]
    assert sum(c.startswith("unpacked") for c in result.changes) == 2
    assert all("If-None-Match" not in g.headers for g in upstream.hits(f"/{OS}/{OC}"))


def test_a_stalled_read_times_out_and_is_resumed(tmp_path, upstream):
    bodies = serve(upstream)
    upstream.then(f"/{OS}/{IPA}", ("stall", 50_000, 3.0))
    run = run_for(tmp_path, upstream.url + "/{os_version}/", read_timeout=0.5)
    started = time.monotonic()
    result = fetch_images(run, downloader(run, []))
    assert time.monotonic() - started < 2.5
    assert by_name(result)[IPA][0] == "resumed"
    assert (tmp_path / "images" / OS / IPA).read_bytes() == bodies[IPA]


def test_server_resuming_at_the_wrong_offset_makes_the_download_start_over(tmp_path, upstream):
    bodies = serve(upstream)
    upstream.then(f"/{OS}/{OC}", ("cut", 100_000), ("wrong-range", 5))
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    assert by_name(result)[OC][0] == "downloaded"
    assert (tmp_path / "images" / OS / OC).read_bytes() == bodies[OC]
    gets = upstream.hits(f"/{OS}/{OC}")
    assert [g.status for g in gets] == [200, 206, 200] and "Range" not in gets[2].headers


@pytest.mark.parametrize("failures", [
    [("status", 500), ("status", 500)],
    [("status", 503), ("cut", 10)],
], ids=["500-twice", "503-then-cut"])
def test_transient_failures_are_retried_with_backoff(tmp_path, upstream, failures):
    bodies = serve(upstream)
    upstream.then(f"/{OS}/{OC}", *failures)
    run = run_for(tmp_path, upstream.url + "/{os_version}/", backoff=0.25)
    waits: list[float] = []
    result = fetch_images(run, downloader(run, waits))
    assert result.status is Status.CHANGED
    assert (tmp_path / "images" / OS / OC).read_bytes() == bodies[OC]
    assert waits == [0.25, 0.5]
    assert len(upstream.hits(f"/{OS}/{OC}")) == 3


def test_429_waits_as_long_as_retry_after_says(tmp_path, upstream):
    serve(upstream)
    upstream.then(f"/{OS}/{IPA}", ("status", 429, {"Retry-After": "1"}))
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    started = time.monotonic()
    result = fetch_images(run)  # the real sleep
    assert result.status is Status.CHANGED
    assert time.monotonic() - started >= 1.0
    assert [g.status for g in upstream.hits(f"/{OS}/{IPA}")] == [429, 200]


def test_retry_after_beyond_max_wait_fails_at_once(tmp_path, upstream):
    serve(upstream)
    upstream.then(f"/{OS}/{OC}", ("status", 503, {"Retry-After": "3600"}))
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    status, detail = by_name(result)[OC]
    assert status == "failed" and "HTTP 503" in detail and "3600s" in detail and "fetch.max_wait" in detail


def test_after_the_last_try_the_error_names_the_url_and_status(tmp_path, upstream):
    serve(upstream)
    upstream.then(f"/{OS}/{OC}", *[("status", 502)] * 3)
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    assert result.status is Status.FAILED
    status, detail = by_name(result)[OC]
    assert status == "failed"
    assert f"{upstream.url}/{OS}/{OC}: HTTP 502 Bad Gateway; gave up after 3 tries" in detail
    assert by_name(result)[IPA][0] == "downloaded"  # one failure does not stop the other artifacts
    assert not (tmp_path / "images" / OS / OC).exists()
    assert not (tmp_path / "work" / "state" / f"{TARGET}.json").exists()


def test_nothing_listening_is_named_plainly(tmp_path):
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/{OS}/{OC}"
    with pytest.raises(DownloadError) as err:
        Downloader(policy=RetryPolicy(tries=2, backoff=0), sleep=lambda s: None).fetch(url, tmp_path / OC)
    assert err.value.message == f"{url}: cannot connect (Connection refused); gave up after 2 tries"
    assert "received are kept" not in err.value.hint


def test_404_fails_at_once_with_a_hint(tmp_path, upstream):
    serve(upstream)
    del upstream.files[f"/{OS}/{IPA}"]
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    assert "HTTP 404 Not Found" in by_name(result)[IPA][1] and "hint:" in by_name(result)[IPA][1]
    assert len(upstream.hits(f"/{OS}/{IPA}")) == 1


def test_304_from_if_modified_since_when_upstream_sends_no_etag(tmp_path, upstream):
    serve(upstream)
    for served in upstream.files.values():
        served.etag = ""
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    fetch_images(run)
    upstream.log.clear()
    again = fetch_images(run_for(tmp_path, upstream.url + "/{os_version}/"))
    assert again.status is Status.UP_TO_DATE
    assert [(r.status, r.headers.get("If-Modified-Since")) for r in upstream.log] == [
        (304, upstream.files[f"/{OS}/{OC}"].last_modified), (304, upstream.files[f"/{OS}/{IPA}"].last_modified)]


def test_a_changed_last_modified_alone_means_download_again(tmp_path, upstream):
    bodies = serve(upstream)
    for served in upstream.files.values():
        served.etag = ""
    url = upstream.url + "/{os_version}/"
    fetch_images(run_for(tmp_path, url))
    upstream.put(f"/{OS}/{IPA}", bodies[IPA], when=time.time() + 3600).etag = ""
    upstream.log.clear()
    result = fetch_images(run_for(tmp_path, url))
    assert [i.status for i in result.items] == ["up to date", "downloaded"]
    assert [r.status for r in upstream.hits(f"/{OS}/{IPA}")] == [200]


def test_md5_mismatch_once_is_fetched_again_and_then_verified(tmp_path, upstream):
    bodies = serve(upstream)
    upstream.then(f"/{OS}/{OC}", ("corrupt",))
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    assert by_name(result)[OC][0] == "downloaded" and "md5 verified" in by_name(result)[OC][1]
    assert (tmp_path / "images" / OS / OC).read_bytes() == bodies[OC]
    assert [g.status for g in upstream.hits(f"/{OS}/{OC}")] == [200, 200]


def test_md5_wrong_twice_fails_with_both_digests_and_keeps_nothing(tmp_path, upstream):
    bodies = serve(upstream)
    wrong = "0" * 32
    upstream.put(f"/{OS}/{OC}.md5", f"{wrong}  {OC}\n".encode())
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    status, detail = by_name(result)[OC]
    got = hashlib.md5(bodies[OC]).hexdigest()
    assert status == "failed"
    assert f"md5 mismatch twice: expected {wrong} ({upstream.url}/{OS}/{OC}.md5), got {got} then {got}" in detail
    folder = tmp_path / "images" / OS
    assert not (folder / OC).exists() and not partial_path(folder / OC).exists()


def test_a_pinned_sha256_is_checked_too(tmp_path, upstream):
    bodies = serve(upstream)
    good = hashlib.sha256(bodies[IPA]).hexdigest()
    run = run_for(tmp_path, upstream.url + "/{os_version}/", ipa_sha256=good, overcloud_sha256="ab" * 32)
    result = fetch_images(run, downloader(run, []))
    assert "sha256 verified (pinned in config)" in by_name(result)[IPA][1]
    assert "sha256 mismatch twice: expected " + "ab" * 32 + " (pinned in config)" in by_name(result)[OC][1]


@pytest.mark.parametrize("member, problem", [
    (("../evil", tarfile.REGTYPE, ""), "escapes the folder"),
    (("a/../../evil", tarfile.REGTYPE, ""), "escapes the folder"),
    (("/etc/evil", tarfile.REGTYPE, ""), "is an absolute path"),
    (("link", tarfile.SYMTYPE, "../../etc/passwd"), "is a symlink"),
    (("link", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
    (("sub/link", tarfile.SYMTYPE, "../overcloud-full.qcow2"), "links are refused"),
    (("hard", tarfile.LNKTYPE, "../outside"), "is a hard link"),
    (("hard", tarfile.LNKTYPE, "overcloud-full.qcow2"), "links are refused"),
    (("tty", tarfile.CHRTYPE, ""), "is a device"),
    (("fifo", tarfile.FIFOTYPE, ""), "is a device, fifo"),
    (("new\nline", tarfile.REGTYPE, ""), "control character"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-absolute", "symlink-inside", "hardlink-out",
        "hardlink-inside", "char-device", "fifo", "newline-in-name"])
def test_unsafe_tar_members_are_refused(tmp_path, member, problem):
    name, kind, link = member
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    with pytest.raises(ImageError, match=problem):
        check_members(tmp_path / "x.tar", [info])


def test_a_file_twice_is_refused(tmp_path):
    with pytest.raises(ImageError, match="'./a' appears twice"):
        check_members(tmp_path / "x.tar", [tarfile.TarInfo("a"), tarfile.TarInfo("./a")])


def crafted_tar(entries: list[tuple[str, bytes, str]], mode: int = 0o644) -> bytes:
    """A tarball of ``(name, data, symlink target)`` entries (a target makes a symlink), owned by uid 4242."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 4242
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_symlink_chain_in_a_served_tarball_writes_nothing_outside_the_cache(tmp_path, upstream):
    # Each link alone stays inside by a lexical check; together they reach the folder above the
    # cache (what Python 3.11.2's extractall followed, as root, with owner and mode restored).
    body = crafted_tar([("a", b"", "."), ("a/b", b"", ".."), ("a/b/c", b"", ".."), ("a/b/c/pwned", b"owned\n", ""),
                        ("overcloud-full.qcow2", b"qcow", "")])
    serve(upstream)
    upstream.put(f"/{OS}/{OC}", body)
    upstream.put(f"/{OS}/{OC}.md5", md5_line(body, OC).encode())
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    status, detail = by_name(result)[OC]
    assert result.status is Status.FAILED and status == "failed"
    assert "member 'a' is a symlink (→ .); links are refused" in detail
    folder = tmp_path / "images" / OS
    assert not list(tmp_path.rglob("pwned")) and not list(tmp_path.parent.glob("pwned"))
    assert not (folder / "a").exists() and not (folder / "overcloud-full.qcow2").exists()
    assert not list(folder.glob(".unpack-*"))
    assert by_name(result)[IPA][0] == "downloaded", "the other artifact is unaffected"


def test_unpacked_files_lose_setuid_and_the_archive_owner(tmp_path, upstream):
    body = crafted_tar([("overcloud-full.qcow2", b"qcow", ""), ("overcloud-full.vmlinuz", b"k", "")], mode=0o6755)
    serve(upstream)
    upstream.put(f"/{OS}/{OC}", body)
    upstream.put(f"/{OS}/{OC}.md5", md5_line(body, OC).encode())
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    assert fetch_images(run, downloader(run, [])).status is Status.CHANGED
    for name in ("overcloud-full.qcow2", "overcloud-full.vmlinuz"):
        st = (tmp_path / "images" / OS / name).stat()
        assert oct(st.st_mode & 0o7777) == oct(0o755) and st.st_uid == os.getuid()


def test_a_tarball_with_dotdot_members_is_rejected_and_nothing_lands_outside(tmp_path, upstream):
    serve(upstream)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("overcloud-full.qcow2", "../escaped"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    upstream.put(f"/{OS}/{OC}", buf.getvalue())
    upstream.put(f"/{OS}/{OC}.md5", md5_line(buf.getvalue(), OC).encode())
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    status, detail = by_name(result)[OC]
    assert status == "failed" and "member '../escaped' escapes the folder; refusing to unpack it" in detail
    folder = tmp_path / "images" / OS
    assert not (folder.parent / "escaped").exists() and not (folder / "overcloud-full.qcow2").exists()
    assert not list(folder.glob(".unpack-*"))


# ---- offline, local mirrors, concurrency, the CLI -----------------------------------------


def test_no_fetch_uses_the_cache_without_any_request(tmp_path, upstream):
    url = primed(tmp_path, upstream)
    result = fetch_images(run_for(tmp_path, url, no_fetch=True))
    assert result.status is Status.UP_TO_DATE
    assert all("--no-fetch" in detail for _, detail in by_name(result).values())
    assert upstream.log == []


def test_no_fetch_without_cache_fails_naming_the_artifact_and_its_url(tmp_path, upstream):
    serve(upstream)
    result = fetch_images(run_for(tmp_path, upstream.url + "/{os_version}/", no_fetch=True))
    assert result.status is Status.FAILED
    detail = by_name(result)[OC][1]
    assert f"{OC} is not cached in {tmp_path / 'images' / OS}" in detail
    assert f"forbids downloading it from {upstream.url}/{OS}/{OC}" in detail
    assert upstream.log == []


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "plain-folder"])
def test_a_local_mirror_works_as_upstream(tmp_path, as_url):
    mirror = tmp_path / "mirror"
    bodies = publish(mirror / OS)
    base = (f"file://{mirror}" if as_url else str(mirror)) + "/{os_version}"
    first = fetch_images(run_for(tmp_path, base))
    assert by_name(first)[OC][0] == "downloaded" and "md5 verified" in by_name(first)[OC][1]
    assert overcloud_image(run_for(tmp_path, base).options, OS).is_file()
    assert fetch_images(run_for(tmp_path, base)).status is Status.UP_TO_DATE
    publish(mirror / OS, "v2")
    again = fetch_images(run_for(tmp_path, base))
    assert by_name(again)[OC][0] == "downloaded" and by_name(again)[IPA][0] == "downloaded"
    assert (tmp_path / "images" / OS / OC).read_bytes() != bodies[OC]
    (mirror / OS / f"{IPA}.md5").write_text("f" * 32 + f"  {IPA}\n")
    (mirror / OS / IPA).write_bytes(b"changed")
    failed = fetch_images(run_for(tmp_path, base))
    assert "md5 mismatch" in by_name(failed)[IPA][1]


def test_the_undercloud_image_is_fetched_when_configured(tmp_path, upstream):
    serve(upstream)
    upstream.put(f"/{OS}/undercloud.qcow2", b"qcow2" * 1000)
    upstream.put(f"/{OS}/undercloud.qcow2.md5", md5_line(b"qcow2" * 1000, "undercloud.qcow2").encode())
    run = run_for(tmp_path, upstream.url + "/{os_version}/", undercloud_image=True)
    result = fetch_images(run, downloader(run, []))
    assert by_name(result)["undercloud.qcow2"][0] == "downloaded"
    assert (tmp_path / "images" / OS / "undercloud.qcow2").read_bytes() == b"qcow2" * 1000


def apex_env(tmp_path: Path, images_url: str, name: str = "") -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APEX_WORK_DIR": str(tmp_path / f"work{name}"),
        "APEX_IMAGE_DIR": str(tmp_path / "images"),
        "APEX_UPSTREAM_IMAGES_URL": images_url,
        "APEX_FETCH_BACKOFF": "0.01",
    }


def test_two_concurrent_runs_download_each_artifact_once(tmp_path, nginx: Nginx, www):
    bodies = publish(www / OS)
    (www / OS / OC).write_bytes(bodies[OC] * 12)  # ~8 MiB at 4 MiB/s: the runs overlap
    (www / OS / f"{OC}.md5").write_text(md5_line(bodies[OC] * 12, OC))
    url = nginx.url + "/slow/{os_version}/"
    procs = [subprocess.Popen([sys.executable, "-m", "apex_tools", "fetch-images", "--json"], cwd=REPO,
                              env=apex_env(tmp_path, url, str(n)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for n in (1, 2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "images" / OS / OC).read_bytes() == bodies[OC] * 12
    tar_gets = [(r["status"], r["bytes"]) for r in nginx.requests() if r["path"] == f"/slow/{OS}/{OC}"]
    assert sorted(tar_gets) == [(200, len(bodies[OC]) * 12), (304, 0)]
    statuses = sorted(json.loads(out)[0]["items"][0]["status"] for out, _ in outs)
    assert statuses == ["downloaded", "up to date"]


def test_the_apex_command_fetches_then_reports_up_to_date(tmp_path, nginx, www, monkeypatch, capsys):
    from apex_tools.main import program

    publish(www / OS)
    for key, value in apex_env(tmp_path, nginx.url + "/{os_version}/").items():
        monkeypatch.setenv(key, value)
    program.run(["apex", "fetch-images", "--json"], exit=False)
    first = json.loads(capsys.readouterr().out)[0]
    assert first["status"] == "changed" and [i["status"] for i in first["items"]] == ["downloaded", "downloaded"]
    program.run(["apex", "fetch-images", "--no-fetch", "--json"], exit=False)
    offline = json.loads(capsys.readouterr().out)[0]
    assert offline["status"] == "up to date"
    assert "not revalidated (--no-fetch)" in offline["items"][0]["detail"]
    program.run(["apex", "fetch-images", "--json"], exit=False)
    assert json.loads(capsys.readouterr().out)[0]["changes"] == ["up to date"]
    state = json.loads((tmp_path / "work" / "state" / f"{TARGET}.json").read_text())
    assert set(state["data"]["artifacts"]) == {OC, IPA}


def test_the_apex_command_fails_cleanly_offline_without_a_cache(tmp_path):
    env = apex_env(tmp_path, "http://127.0.0.1:9/{os_version}/")
    result = subprocess.run([sys.executable, "-m", "apex_tools", "fetch-images", "--no-fetch"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{OC} is not cached" in result.stdout + result.stderr


# ---- small pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("d41d8cd98f00b204e9800998ecf8427e  overcloud-full.tar\n", "d41d8cd98f00b204e9800998ecf8427e"),
    ("D41D8CD98F00B204E9800998ECF8427E\n", "d41d8cd98f00b204e9800998ecf8427e"),
    ("0" * 32 + "  other.tar\n" + "1" * 32 + " *overcloud-full.tar\n", "1" * 32),
    ("not a checksum\n", None),
], ids=["rdo-format", "bare-upper", "sums-file", "garbage"])
def test_parse_sidecar(text, expected):
    assert parse_sidecar(text, "overcloud-full.tar", "md5") == expected


def test_retry_after_accepts_seconds_and_dates():
    import email.utils

    import requests

    response = requests.Response()
    response.headers["Retry-After"] = "7"
    assert retry_after(response) == 7.0
    response.headers["Retry-After"] = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after(response) <= 31


def test_backoff_doubles_and_is_capped():
    policy = RetryPolicy(backoff=1.0, max_wait=5.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_a_replaced_cached_file_is_not_trusted(tmp_path, upstream):
    url = primed(tmp_path, upstream)
    (tmp_path / "images" / OS / IPA).write_bytes(b"someone else's file")
    result = fetch_images(run_for(tmp_path, url))
    assert by_name(result)[IPA][0] == "downloaded"
    ipa_gets = upstream.hits(f"/{OS}/{IPA}")
    assert len(ipa_gets) == 1 and "If-None-Match" not in ipa_gets[0].headers


def test_errors_are_download_errors_from_the_library(tmp_path, upstream):
    serve(upstream)
    upstream.then(f"/{OS}/{OC}", *[("status", 500)] * 2)
    with pytest.raises(DownloadError, match=r"HTTP 500 Internal Server Error; gave up after 2 tries"):
        Downloader(policy=RetryPolicy(tries=2, backoff=0), sleep=lambda s: None).fetch(
            f"{upstream.url}/{OS}/{OC}", tmp_path / OC)


def test_an_unusable_image_dir_fails_the_artifact_with_a_hint(tmp_path, upstream):
    serve(upstream)
    (tmp_path / "images").write_text("a file where the cache folder should be")
    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    result = fetch_images(run, downloader(run, []))
    assert result.status is Status.FAILED
    status, detail = by_name(result)[OC]
    assert status == "failed" and "Not a directory" in detail and "image_dir is writable" in detail


HTML = b"<!DOCTYPE html><html><body>Welcome to our mirror</body></html>"


@pytest.mark.parametrize("sidecar, pin, outcome", [
    (HTML, False, ("failed", "ironic-python-agent.tar.md5 is an HTML page, not a checksum file")),
    (HTML, True, ("downloaded", "sha256 verified (pinned in config)")),
    (("0" * 32 + "  another-file.tar\n").encode(), False, ("failed", "holds no md5 digest for ironic-python-agent.tar")),
    (None, False, ("failed", "upstream publishes no checksum (.sha256, .md5) and none is pinned")),
    (None, True, ("downloaded", "sha256 verified (pinned in config)")),
], ids=["html-soft-404-fails", "html-with-a-pin-is-ignored", "sums-without-our-file-fails", "404-without-a-pin-fails",
        "404-with-a-pin-is-fine"])
def test_a_sidecar_must_be_a_checksum_of_our_file_unless_one_is_pinned(tmp_path, upstream, sidecar, pin, outcome):
    bodies = serve(upstream)
    if sidecar is None:
        del upstream.files[f"/{OS}/{IPA}.md5"]
    else:
        upstream.put(f"/{OS}/{IPA}.md5", sidecar)
    pinned = {"ipa_sha256": hashlib.sha256(bodies[IPA]).hexdigest()} if pin else {}
    run = run_for(tmp_path, upstream.url + "/{os_version}/", **pinned)
    result = fetch_images(run, downloader(run, []))
    status, detail = by_name(result)[IPA]
    assert (status, outcome[1] in detail) == (outcome[0], True), detail
    if status == "failed":
        assert not (tmp_path / "images" / OS / IPA).exists()


def test_a_file_recorded_as_unverified_is_never_up_to_date(tmp_path, upstream):
    url = primed(tmp_path, upstream)
    meta = meta_path(tmp_path / "images" / OS / IPA)
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "digests": {}}))  # as an older apex wrote it without a sidecar
    offline = fetch_images(run_for(tmp_path, url, no_fetch=True))
    assert by_name(offline)[IPA][0] == "failed" and "no verified download record" in by_name(offline)[IPA][1]
    online = fetch_images(run_for(tmp_path, url))
    assert by_name(online)[IPA][0] == "downloaded" and "md5 verified" in by_name(online)[IPA][1]


def test_progress_counts_every_byte_and_the_summary_gives_size_time_and_rate(tmp_path, upstream):
    import contextlib
    import re

    bodies = serve(upstream)
    upstream.then(f"/{OS}/{OC}", ("cut", 100_000))
    bars: list[list] = []

    class Bar:
        def __init__(self, description, total):
            self.row = [description, total, 0]
            bars.append(self.row)

        def advance(self, amount=1):
            self.row[2] += amount

        def set_total(self, total):
            self.row[1] = total

    @contextlib.contextmanager
    def progress(description, total=None):
        yield Bar(description, total)

    run = run_for(tmp_path, upstream.url + "/{os_version}/")
    run.progress = progress
    result = fetch_images(run, Downloader(policy=retry_policy(run.options), progress=progress, sleep=lambda s: None))
    size = len(bodies[OC])
    # The resumed attempt's bar starts where the partial file ends and still ends at the full size.
    assert bars[:2] == [[f"downloading {OC}", size, 100_000], [f"downloading {OC}", size, size]]
    assert bars[2] == [f"downloading {IPA}", len(bodies[IPA]), len(bodies[IPA])]
    assert re.fullmatch(r"from 97\.7 KiB of 670\.0 KiB; 670\.0 KiB in \d+\.\ds \(\d+\.\d [KMG]iB/s\); "
                        r"md5 verified \(.+\.md5\); unpacked 3 files", by_name(result)[OC][1])
    assert re.fullmatch(r"\d+\.\d KiB in \d+\.\ds \(\d+\.\d [KMG]iB/s\); md5 verified \(.+\); unpacked 2 files",
                        by_name(result)[IPA][1])
