"""Benchmark push-registry's mirror against what users would otherwise run, and against loopback.

Between loopback registries (Debian's docker-registry), all in one run, on (a) many small
kolla-shaped images sharing base layers and (b) a few large ones, each method into a fresh
registry:
  * ours: ``Mirror`` run as its own process (interpreter start and imports included),
  * ``skopeo copy`` one image after another, and 4 at a time (like ``xargs -P4``),
  * ``docker pull`` / ``tag`` / ``push`` one image after another (the running engine),
then a re-run of each into the registry it just filled. Also measured: the single-stream upload
rate into the same kind of registry (one large blob), hence the loopback limit = unique blob
bytes / that rate; requests per image by method on each side (from the registries' logs); our
bytes sent against the unique blob bytes; our peak RSS while mirroring the large images.

Goals: >= 1.5x skopeo 4-at-a-time on the small images; >= 2x skopeo one-at-a-time (full size);
large images <= 1.25x the loopback limit; re-run: one HEAD per image each side, < 0.4 s for the
whole process (the apex command's own re-run and the lab's 30 images against skopeo are measured by
bench/deploy_lab.py); bytes sent == unique blob bytes; peak RSS < 150 MiB.

    python bench/push_registry.py            # 45 small images + 3 large ones, medians of 3
    python bench/push_registry.py --short    # 16 small + 1 large, one run each: same columns (CI)
    python bench/push_registry.py --profile  # also: where our process spends its time (cProfile)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

from apex_tools.registry.client import DOCKER_MANIFEST, Manifest, RegistryClient

NAMESPACE = "tripleomaster"
TAG = "current-tripleo"
METHODS = ("HEAD", "GET", "PUT", "POST", "PATCH")
MiB = 2**20
# Kolla's images come in families over a common openstack-base (nova-api, nova-compute, ...).
FAMILIES = ("nova", "neutron", "heat", "cinder", "glance", "keystone", "swift", "ironic", "octavia")

GOAL_SKOPEO4 = 1.5
GOAL_SKOPEO1 = 2.0
GOAL_LIMIT = 1.25
GOAL_RERUN = 0.4  # issue 21: push-registry alone re-run <= 0.4 s (the whole command: bench/deploy_lab.py)
GOAL_RSS = 150 * MiB


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def layer(name: str, size: int) -> tuple[bytes, str]:
    """A gzip (stored, not compressed: fast to make) tar of one random file: (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=0, mtime=0), "sha256:" + hashlib.sha256(data).hexdigest()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(client: RegistryClient, repository: str, layers: list[tuple[bytes, str]],
         pushed: set[tuple[str, str]]) -> dict[str, int]:
    """Push an image through the API; returns its blobs {digest: size}."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}).encode()
    blobs = [config] + [b for b, _ in layers]
    for blob in blobs:
        digest = sha(blob)
        if (repository, digest) not in pushed:
            client.upload_blob(repository, digest, blob, len(blob))
            pushed.add((repository, digest))
    body = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": sha(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(b),
                        "digest": sha(b)} for b, _ in layers]}
    raw = json.dumps(body).encode()
    client.put_manifest(repository, TAG, Manifest(DOCKER_MANIFEST, sha(raw), raw))
    return {sha(b): len(b) for b in blobs}


def seed(client: RegistryClient, small: int, large: int, scale: float, large_mb: int) -> dict[str, tuple[list[str], int]]:
    """Small kolla-shaped images (os, packages, openstack-base, a family base, their own layer) and
    large ones (the same base, one big layer); returns {set: (repositories, unique blob bytes)}."""
    mb = lambda n: int(n * scale * MiB)  # noqa: E731
    base = [layer("base/os", mb(24)), layer("base/packages", mb(8)), layer("openstack-base", mb(12))]
    families = {f: layer(f"{f}-base", mb(2)) for f in FAMILIES}
    pushed: set[tuple[str, str]] = set()
    sets: dict[str, tuple[list[str], int]] = {}
    blobs: dict[str, int] = {}
    repos = []
    for i in range(small):
        family = FAMILIES[i % len(FAMILIES)]
        repo = f"{NAMESPACE}/centos-binary-{family}-service{i:02d}"
        blobs.update(push(client, repo, base + [families[family], layer(f"svc{i}", int(mb(0.3) * (1 + i % 3)))],
                          pushed))
        repos.append(repo)
    sets["small"] = (repos, sum(blobs.values()))
    blobs, repos = {}, []
    for i in range(large):
        repo = f"{NAMESPACE}/centos-binary-large{i}"
        blobs.update(push(client, repo, base + [layer(f"large{i}", large_mb * MiB)], pushed))
        repos.append(repo)
    sets["large"] = (repos, sum(blobs.values()))
    return sets


@dataclass
class Registry:
    """A docker-registry on a free loopback port, with its own storage and log."""

    work: Path
    address: str = field(default_factory=free_address)

    def __post_init__(self) -> None:
        # Imported here: the ``--mirror`` child (our command, timed) needs none of this.
        from apex_tools.registry.server import ensure_local_registry, paths

        self.client = RegistryClient(self.address, tls="http")
        ensure_local_registry(self.address, self.work, self.client)
        self.log = paths(self.work)["log"]

    @property
    def host(self) -> str:
        return self.address

    def mark(self) -> int:
        return self.log.stat().st_size

    def requests(self, since: int) -> Counter:
        """Requests answered since ``since`` (a log offset), by method."""
        time.sleep(0.05)  # the registry logs just after answering
        with self.log.open("rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        return Counter(re.findall(r'msg="response completed[^"]*".*?http\.request\.method=(\w+)', text))

    def stop(self) -> None:
        from apex_tools.registry.server import stop_local_registry

        stop_local_registry(self.work)
        shutil.rmtree(self.work, ignore_errors=True)


@dataclass
class Run:
    seconds: float
    source: Counter
    target: Counter
    stats: dict = field(default_factory=dict)


# -- the methods ---------------------------------------------------------------------------

def ours(jobs: int, profile: Path | None = None, code: str | None = None) -> Callable[[str, str, list[str]], dict]:
    """Our mirror as its own process; ``code``: a folder holding another apex_tools (a baseline)."""
    env = dict(os.environ, PYTHONPATH=code) if code else None

    def run(src: str, dst: str, repos: list[str]) -> dict:
        argv = [sys.executable, __file__, "--mirror", src, dst, "--jobs", str(jobs)]
        if profile is not None:
            argv += ["--profile-to", str(profile)]
        proc = subprocess.Popen(argv + repos, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"our mirror failed:\n{err.decode()}")
        return json.loads(out)
    return run


def skopeo(parallel: int) -> Callable[[str, str, list[str]], dict]:
    def copy(src: str, dst: str, repo: str) -> None:
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                        f"docker://{src}/{repo}:{TAG}", f"docker://{dst}/{repo}:{TAG}"], check=True,
                       capture_output=True)

    def run(src: str, dst: str, repos: list[str]) -> dict:
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda r: copy(src, dst, r), repos))
        return {}
    return run


def docker_loop(src: str, dst: str, repos: list[str]) -> dict:
    def docker(*argv: str) -> None:
        subprocess.run(["docker", *argv], check=True, capture_output=True)

    for repo in repos:
        docker("pull", f"{src}/{repo}:{TAG}")
        docker("tag", f"{src}/{repo}:{TAG}", f"{dst}/{repo}:{TAG}")
        docker("push", f"{dst}/{repo}:{TAG}")
    return {}


def docker_forget(hosts: list[str], repos: list[str]) -> None:
    names = [f"{h}/{r}:{TAG}" for h in hosts for r in repos]
    subprocess.run(["docker", "rmi", "--force", *names], capture_output=True)


def start_profiling() -> tuple[list, Counter]:
    """cProfile in every thread (the work happens in the pools), and wall time per request kind."""
    import cProfile
    import threading

    profilers = [cProfile.Profile()]
    waits: Counter = Counter()
    run = threading.Thread.run

    def profiled(self: threading.Thread) -> None:
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()
        try:
            run(self)
        finally:
            profiler.disable()

    threading.Thread.run = profiled  # type: ignore[method-assign]
    request = RegistryClient.request

    def timed_request(self: RegistryClient, method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
        kind = f"{method} {'manifest' if '/manifests/' in path else 'upload' if '/uploads/' in path else 'blob'}"
        if kwargs.get("params", {}).get("mount"):
            kind += " (mount)"
        started = time.perf_counter()
        try:
            return request(self, method, path, **kwargs)
        finally:
            waits[kind + " n"] += 1
            waits[kind] += time.perf_counter() - started

    RegistryClient.request = timed_request  # type: ignore[method-assign]
    profilers[0].enable()
    return profilers, waits


def stop_profiling(profilers: list, waits: Counter, to: Path) -> None:
    import pstats

    profilers[0].disable()
    stats = pstats.Stats(profilers[0])
    for profiler in profilers[1:]:
        stats.add(profiler)
    stats.dump_stats(str(to))
    to.with_suffix(".waits").write_text(json.dumps(waits))


def peak_rss() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def mirror_main(args: argparse.Namespace) -> int:
    """The ``--mirror`` child: our whole command, timed from outside; prints its counters as JSON."""
    started = time.perf_counter()
    profilers: list = []
    waits: Counter = Counter()
    if args.profile_to:
        profilers, waits = start_profiling()
    from apex_tools.core.reference import ImageRef
    from apex_tools.registry.mirror import CopyJob, Mirror

    src, dst, repos = args.mirror[0], args.mirror[1], args.repos
    clients = {h: RegistryClient(h, tls="http") for h in (src, dst)}
    jobs = [CopyJob(ImageRef.parse(f"{src}/{r}:{TAG}"), ImageRef.parse(f"{dst}/{r}:{TAG}")) for r in repos]
    mirror = Mirror(clients.__getitem__, jobs=args.jobs)
    results = mirror.copy_all(jobs)
    if profilers:
        stop_profiling(profilers, waits, Path(args.profile_to))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} failed: {failed[0].detail}", file=sys.stderr)
        return 1
    s = mirror.stats
    print(json.dumps({"bytes_sent": s.bytes_sent, "blobs_sent": s.blobs_sent, "blobs_mounted": s.blobs_mounted,
                      "statuses": dict(Counter(r.status for r in results)),
                      "inside": time.perf_counter() - started,
                      "cpu": sum(os.times()[:2]),
                      "rss": peak_rss()}))
    return 0


# -- the loopback limit ----------------------------------------------------------------------

def upload_rate(registry: Registry, size: int, reps: int) -> float:
    """Bytes/s of one blob sent in one stream from memory into ``registry`` (median of ``reps``)."""
    rates = []
    for i in range(reps):
        blob = os.urandom(size)
        digest = sha(blob)
        host, port = registry.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port))
        conn.request("POST", f"/v2/bench/loopback{i}/blobs/uploads/")
        response = conn.getresponse()
        response.read()
        location = urljoin(f"http://{registry.address}/", response.headers["Location"])
        started = time.perf_counter()
        conn.request("PUT", f"{location}&digest={digest}", body=blob,
                     headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        response.read()
        rates.append(size / (time.perf_counter() - started))
        conn.close()
        assert response.status == 201, response.status
        del blob
    return statistics.median(rates)


# -- the report ------------------------------------------------------------------------------

def per_image(counts: Counter, images: int) -> str:
    parts = [f"{m} {counts[m] / images:.1f}" for m in METHODS if counts.get(m)]
    return " ".join(parts) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a smaller set, one repetition (for CI)")
    parser.add_argument("--jobs", type=int, default=4, help="our parallel images (config `jobs`)")
    parser.add_argument("--reps", type=int, default=None, help="cold runs per method (median); 3, short 1")
    parser.add_argument("--sets", default="small,large", help="which sets to run (small, large)")
    parser.add_argument("--methods", default="", help="only the methods whose name contains one of these "
                        "(comma-separated), e.g. ours")
    parser.add_argument("--skip-docker", action="store_true", help="leave out the docker loop")
    parser.add_argument("--profile", action="store_true", help="print where our cold runs spend their time")
    parser.add_argument("--baseline", metavar="DIR", action="append", default=[],
                        help="also time the apex_tools in DIR (e.g. an older `git archive <rev> apex_tools`), "
                        "as 'ours (DIR's name)'; repeatable")
    parser.add_argument("--mirror", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    parser.add_argument("repos", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mirror:
        return mirror_main(args)

    sizes = dict(small=16, large=1, scale=0.25, large_mb=128) if args.short else \
        dict(small=45, large=3, scale=1.0, large_mb=160)
    reps = args.reps or (1 if args.short else 3)
    probe = (64 if args.short else 256) * MiB
    root = Path(tempfile.mkdtemp(prefix="apex-bench-"))
    registries: list[Registry] = []

    def registry(name: str) -> Registry:
        reg = Registry(root / f"{name}-{len(registries)}")
        registries.append(reg)
        return reg

    methods: dict[str, Callable[[str, str, list[str]], dict]] = {
        f"ours (jobs={args.jobs})": ours(args.jobs),
        **{f"ours ({Path(code).name})": ours(args.jobs, code=code) for code in args.baseline},
        "skopeo copy, one at a time": skopeo(1),
        "skopeo copy, 4 at a time": skopeo(4),
    }
    use_docker = not args.skip_docker and shutil.which("docker") is not None
    if use_docker:
        methods["docker pull/tag/push, in turn"] = docker_loop
    OURS = next(iter(methods))
    if args.methods:
        methods = {n: m for n, m in methods.items() if n == OURS or any(w in n for w in args.methods.split(","))}
    try:
        upstream = registry("upstream")
        print(f"seeding {sizes['small']} small images + {sizes['large']} large ones ...", flush=True)
        sets = seed(upstream.client, **sizes)
        rate = upload_rate(registry("loopback"), probe, 3)
        registries.pop().stop()
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; single-stream upload into "
              f"docker-registry: {rate / MiB:.0f} MiB/s ({probe // MiB} MiB blob, median of 3)\n", flush=True)

        results: dict[str, dict[str, dict[str, list[Run]]]] = {}
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
        for set_name, (repos, unique) in sets.items():
            runs = results[set_name] = {m: {"cold": [], "rerun": []} for m in methods}
            for rep in range(reps):
                # Interleaved, so the machine's noise falls on every method alike.
                for name, method in methods.items():
                    if name.startswith("docker") and rep:
                        continue
                    target = registry("target")
                    for kind in ("cold", "rerun"):
                        if kind == "rerun" and rep and not name.startswith("ours"):
                            continue
                        up, down = upstream.mark(), target.mark()
                        started = time.perf_counter()
                        stats = method(upstream.host, target.host, repos)
                        seconds = time.perf_counter() - started
                        runs[name][kind].append(Run(seconds, upstream.requests(up), target.requests(down), stats))
                    if name.startswith("ours"):
                        for repo in repos:
                            assert target.client.head_manifest(repo, TAG) == upstream.client.head_manifest(repo, TAG)
                    if name.startswith("docker"):
                        docker_forget([upstream.host, target.host], repos)
                    registries.remove(target)
                    target.stop()
            if args.profile:
                profile = root / f"{set_name}.prof"
                target = registry("profiled")
                ours(args.jobs, profile)(upstream.host, target.host, repos)
                registries.remove(target)
                target.stop()
                import pstats

                print(f"-- profile of our cold run, {set_name} set: all threads, by own time --")
                pstats.Stats(str(profile)).sort_stats("tottime").print_stats(22)
                waits = json.loads(profile.with_suffix(".waits").read_text())
                print("request kind                 count   wall s (sum over threads)   mean ms")
                for kind in sorted(k for k in waits if not k.endswith(" n")):
                    n = waits[kind + " n"]
                    print(f"  {kind:<26}{n:>6}{waits[kind]:>12.3f}{1000 * waits[kind] / n:>22.2f}")
        ok = report(results, sets, rate, args, OURS)
        print("\ngoals:", "met" if ok else "NOT met")
        return 0
    finally:
        for reg in registries:
            reg.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(results: dict, sets: dict, rate: float, args: argparse.Namespace, ours_name: str) -> bool:
    checks: list[tuple[str, bool]] = []
    for set_name, runs in results.items():
        repos, unique = sets[set_name]
        n = len(repos)
        med = {m: statistics.median(r.seconds for r in v["cold"]) for m, v in runs.items()}
        rerun = {m: statistics.median(r.seconds for r in v["rerun"]) for m, v in runs.items()}
        limit = unique / rate
        print(f"== {set_name}: {n} images, {unique / MiB:.1f} MiB of unique blobs; loopback limit "
              f"{limit:.2f} s")
        print(f"{'method':<32}{'cold s':>8}{'x limit':>9}{'ours is':>9}{'re-run s':>10}   runs")
        for m in runs:
            mine = med[ours_name]
            print(f"{m:<32}{med[m]:>8.2f}{med[m] / limit:>8.2f}x{med[m] / mine if m != ours_name else 1:>8.2f}x"
                  f"{rerun[m]:>10.3f}   {len(runs[m]['cold'])}")
        print(f"requests per image ({'upstream':<28} | target)")
        for m in runs:
            for kind in ("cold", "rerun"):
                r = runs[m][kind][0]
                print(f"  {m:<30} {kind:<6} {per_image(r.source, n):<28} | {per_image(r.target, n)}")
        cold = runs[ours_name]["cold"]
        again = runs[ours_name]["rerun"][0]
        sent = {r.stats["bytes_sent"] for r in cold}
        rss = max(r.stats["rss"] for r in cold)
        print(f"ours: bytes sent {sorted(sent)} / unique {unique}; peak RSS {rss / MiB:.0f} MiB; "
              f"inside the process {statistics.median(r.stats['inside'] for r in cold):.2f} s cold, "
              f"{again.stats['inside']:.3f} s re-run; CPU of the whole process "
              f"{statistics.median(r.stats['cpu'] for r in cold):.2f} s cold, {again.stats['cpu']:.2f} s re-run\n")
        checks.append((f"{set_name}: bytes sent == unique blob bytes", sent == {unique}))
        heads = again.source.get("HEAD", 0) == n and again.target.get("HEAD", 0) == n and \
            sum(again.source.values()) + sum(again.target.values()) == 2 * n
        checks.append((f"{set_name}: re-run is one HEAD per image each side "
                       f"(upstream {per_image(again.source, n)}, target {per_image(again.target, n)})", heads))
        checks.append((f"{set_name}: re-run {rerun[ours_name]:.3f} s < {GOAL_RERUN} s", rerun[ours_name] < GOAL_RERUN))
        if set_name == "small" and "skopeo copy, 4 at a time" in med and "skopeo copy, one at a time" in med:
            s4 = med["skopeo copy, 4 at a time"] / med[ours_name]
            checks.append((f"small: {s4:.2f}x skopeo 4 at a time >= {GOAL_SKOPEO4}x", s4 >= GOAL_SKOPEO4))
            s1 = med["skopeo copy, one at a time"] / med[ours_name]
            label = f"small: {s1:.2f}x skopeo one at a time >= {GOAL_SKOPEO1}x"
            checks.append((label + (" (goal is for full size)" if args.short else ""), s1 >= GOAL_SKOPEO1 or args.short))
        elif set_name == "large":
            x = med[ours_name] / limit
            checks.append((f"large: {x:.2f}x the loopback limit <= {GOAL_LIMIT}x", x <= GOAL_LIMIT))
            checks.append((f"large: peak RSS {rss / MiB:.0f} MiB < {GOAL_RSS // MiB} MiB", rss < GOAL_RSS))
    for label, good in checks:
        print(f"  [{'ok' if good else 'NOT'}] {label}")
    for label, good in checks:
        if not good:
            print(f"!!! GOAL MISSED: {label} !!!")
    return all(good for _, good in checks)


if __name__ == "__main__":
    sys.exit(main())
