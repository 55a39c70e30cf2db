"""Benchmark push-registry's mirror against the loops users would otherwise write.

Between loopback registries (Debian's docker-registry), in the same run:
  * this target's ``Mirror`` (parallel, each blob once, mounts, digest skip),
  * ``skopeo copy`` of each image in turn,
  * ``docker pull`` / ``tag`` / ``push`` of each image in turn (the running engine),
each into a fresh registry; then a no-op re-run of the mirror, and bytes sent against the
unique blob bytes. Goals: >= 2x the skopeo loop, >= 5x the docker loop, re-run < 1 s,
bytes sent == unique bytes.

    python bench/push_registry.py            # 24 images over a shared base + 3 large ones
    python bench/push_registry.py --short    # a quick CI-sized run
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import DOCKER_MANIFEST, Manifest, RegistryClient
from apex_tools.registry.mirror import ALREADY_THERE, CopyJob, Mirror
from apex_tools.registry.server import ensure_local_registry, stop_local_registry

NAMESPACE = "tripleomaster"
TAG = "current-tripleo"


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def layer(name: str, size: int) -> tuple[bytes, str]:
    """A gzipped tar with one file of ``size`` random bytes: (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(data).hexdigest()


def push(client: RegistryClient, repository: str, layers: list[tuple[bytes, str]]) -> int:
    """Push an image by hand through the API; returns its blob bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}).encode()
    blobs = [config] + [b for b, _ in layers]
    for blob in blobs:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        if client.has_blob(repository, digest) is None:
            client.upload_blob(repository, digest, blob, len(blob))
    body = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(b),
                        "digest": "sha256:" + hashlib.sha256(b).hexdigest()} for b, _ in layers]}
    raw = json.dumps(body).encode()
    client.put_manifest(repository, TAG, Manifest(DOCKER_MANIFEST, "sha256:" + hashlib.sha256(raw).hexdigest(), raw))
    return sum(len(b) for b in blobs)


def seed(client: RegistryClient, small: int, large: int, base_mb: float, own_kb: int, large_mb: int) -> tuple[list[str], int]:
    """Small images over a shared two-layer base, plus large ones; returns (repositories, unique bytes)."""
    base = [layer("base/os", int(base_mb * 0.75 * 2**20)), layer("base/python", int(base_mb * 0.25 * 2**20))]
    unique = sum(len(b) for b, _ in base)
    repositories = []
    for i in range(small):
        repo = f"{NAMESPACE}/centos-binary-service{i:02d}"
        unique += push(client, repo, base + [layer(f"svc{i}", own_kb * 1024)]) - sum(len(b) for b, _ in base)
        repositories.append(repo)
    for i in range(large):
        repo = f"{NAMESPACE}/centos-binary-large{i}"
        unique += push(client, repo, base + [layer(f"large{i}", large_mb * 2**20)]) - sum(len(b) for b, _ in base)
        repositories.append(repo)
    return repositories, unique


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="few, small images (for CI)")
    parser.add_argument("--jobs", type=int, default=4, help="the mirror's parallel images (config `jobs`)")
    parser.add_argument("--skip-docker", action="store_true", help="leave out the docker loop")
    args = parser.parse_args()
    sizes = dict(small=8, large=1, base_mb=4, own_kb=200, large_mb=16) if args.short else \
        dict(small=24, large=3, base_mb=40, own_kb=1024, large_mb=120)

    root = Path(tempfile.mkdtemp(prefix="apex-bench-"))
    started: list[Path] = []

    def registry(name: str) -> RegistryClient:
        address = free_address()
        client = RegistryClient(address, tls="http")
        ensure_local_registry(address, root / name, client)
        started.append(root / name)
        return client

    try:
        upstream = registry("upstream")
        print(f"seeding {sizes['small']} images over a shared base + {sizes['large']} large ones ...", flush=True)
        repositories, unique = seed(upstream, **sizes)
        print(f"{len(repositories)} images, {unique / 2**20:.1f} MiB of unique blobs; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")

        ours = registry("mirror")
        clients = {upstream.host: upstream, ours.host: ours}
        jobs = [CopyJob(ImageRef.parse(f"{upstream.host}/{r}:{TAG}"), ImageRef.parse(f"{ours.host}/{r}:{TAG}"))
                for r in repositories]
        mirror = Mirror(clients.__getitem__, jobs=args.jobs)
        t_ours = timed(lambda: mirror.copy_all(jobs))
        again = Mirror(clients.__getitem__, jobs=args.jobs)
        rerun_results: list = []
        t_rerun = timed(lambda: rerun_results.extend(again.copy_all(jobs)))
        assert all(r.status == ALREADY_THERE for r in rerun_results), "re-run found work to do"

        skopeo = registry("skopeo")

        def skopeo_loop() -> None:
            for repo in repositories:
                subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                                f"docker://{upstream.host}/{repo}:{TAG}", f"docker://{skopeo.host}/{repo}:{TAG}"],
                               check=True, capture_output=True)

        t_skopeo = timed(skopeo_loop)

        t_docker = None
        if not args.skip_docker and shutil.which("docker"):
            target = registry("docker")

            def docker(*argv: str) -> None:
                subprocess.run(["docker", *argv], check=True, capture_output=True)

            def docker_loop() -> None:
                for repo in repositories:
                    docker("pull", f"{upstream.host}/{repo}:{TAG}")
                    docker("tag", f"{upstream.host}/{repo}:{TAG}", f"{target.host}/{repo}:{TAG}")
                    docker("push", f"{target.host}/{repo}:{TAG}")

            t_docker = timed(docker_loop)
            for repo in repositories:
                subprocess.run(["docker", "rmi", f"{upstream.host}/{repo}:{TAG}", f"{target.host}/{repo}:{TAG}"],
                               capture_output=True)

        for repo in repositories:
            digest = upstream.head_manifest(repo, TAG)
            assert ours.head_manifest(repo, TAG) == digest, f"{repo}: digest not preserved"

        print(f"{'method':<34}{'seconds':>10}{'ours is':>12}")
        print(f"{'push-registry mirror (jobs=%d)' % args.jobs:<34}{t_ours:>10.2f}{'':>12}")
        print(f"{'skopeo copy, one at a time':<34}{t_skopeo:>10.2f}{t_skopeo / t_ours:>11.1f}x")
        if t_docker is not None:
            print(f"{'docker pull/tag/push, one at a time':<34}{t_docker:>10.2f}{t_docker / t_ours:>11.1f}x")
        print(f"\nno-op re-run: {t_rerun:.3f} s (goal < 1 s)")
        print(f"bytes sent: {mirror.stats.bytes_sent} / unique blob bytes: {unique} "
              f"({'equal' if mirror.stats.bytes_sent == unique else 'DIFFERENT'}); "
              f"{mirror.stats.blobs_sent} blobs sent, {mirror.stats.blobs_mounted} mounted")
        ok = (t_skopeo / t_ours >= 2 and (t_docker is None or t_docker / t_ours >= 5) and t_rerun < 1
              and mirror.stats.bytes_sent == unique)
        print("goals:", "met" if ok else "NOT met")
        return 0
    finally:
        for work in started:
            stop_local_registry(work)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
