"""Benchmark the native builder against the engines and the daemonless pipeline a user could script.

In one run, on a loopback registry (Debian's docker-registry) holding the bases:
  * lab:   the lab's six patched nova images (kolla-shaped, a symlinked python folder), the lab's
           nova patch;
  * large: images of >= 500 MiB whose patched file sits in a >= 200 MiB layer under two others
           (generated here and pushed over the v2 API; --short scales them down).
Methods, each writing its own tag, engine caches emptied first:
  * native:  ``build_all`` + ``push_built`` in a process of its own (for its peak RSS), timed from its
             first request to its last, as the engine builders are timed in this process (the
             time with interpreter start and imports is printed too),
  * docker:  the generated Dockerfile built and pushed by the running engine (``DockerBuilder``),
  * buildah: the same Dockerfile with ``BuildahBuilder``,
  * skopeo+umoci: ``skopeo copy`` to an OCI layout, ``umoci unpack``, GNU patch, ``umoci repack``,
    ``skopeo copy`` back, one image after another.
Printed: seconds, ratios, bytes each method read from the registry (its log) against the images'
size and against the layers down to the deepest one holding a patched file, blobs uploaded, and
the native process's peak RSS.

Goals: native >= 10x faster than docker and >= 3x than skopeo+umoci on both sets; native's bytes
read <= the layers down to the deepest holder.

    python bench/rebuild.py            # lab set + 3 large images of ~530 MiB
    python bench/rebuild.py --short    # lab set + 1 large image of ~66 MiB (CI)
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from push_registry import MiB, Registry, peak_rss

from apex_tools.core.reference import ImageRef
from apex_tools.lab.images import Layer, SeedImage, layer_of, push_seeds, version_text
from apex_tools.lab.rootfs import Entry, base_entries, folder, text, with_parents
from apex_tools.patching.apply import PatchStep
from apex_tools.patching.dockerfile import ImagePatch, image_labels, render_dockerfile
from apex_tools.registry.client import RegistryClient

REPO = Path(__file__).resolve().parent.parent
PATCH = REPO / "config/patches/lab/nova-lab-version.patch"
SITE = "/usr/lib/python3.9/site-packages"
TAG = "current-tripleo"
NOVA = ("nova-api", "nova-compute", "nova-conductor", "nova-libvirt", "nova-novncproxy", "nova-scheduler")
GOAL_DOCKER = 10.0
GOAL_PIPELINE = 3.0
JOBS = 4  # config `jobs`' default


@dataclass(frozen=True)
class Image:
    """One base to patch: repository, user, and the bytes of its layers down to the patched file's holder."""

    repository: str
    user: str
    depth_bytes: dict[str, int]  # digest -> size of the layers from the top down to the holder


# -- the sets --------------------------------------------------------------------------------

def lab_set(client: RegistryClient, work: Path) -> list[Image]:
    """The lab's images (the default deployment's, as `apex lab up` seeds them); the six nova ones."""
    from apex_tools.core.config import Layer as ConfigLayer, resolve
    from apex_tools.core.run import RunContext
    from apex_tools.lab.stand import lab_seeds

    options = resolve([ConfigLayer("bench", {"work_dir": str(work / "lab-work"),
                                             "upstream": {"registry": client.host, "ceph_registry": client.host}})
                       ]).options
    seeds = lab_seeds(RunContext(options))
    push_seeds(client, seeds)
    return [Image(s.repository, "nova", down_to_holder(s.layers)) for s in seeds
            if s.repository.rsplit("centos-binary-", 1)[-1] in NOVA]


def down_to_holder(layers: tuple[Layer, ...]) -> dict[str, int]:
    """The layers from the top down to the deepest one holding a path the patch needs: nova's
    version.py or a link on its way (the lab's ``usr/lib/python3.9``): {digest: size}."""
    out: dict[str, int] = {}
    deepest: dict[str, int] = {}
    for layer in reversed(layers):
        out[layer.digest] = len(layer.blob)
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.blob))) as tar:
            if any(m.name.endswith("/nova/version.py") or (m.issym() and SITE[1:].startswith(m.name + "/"))
                   for m in tar.getmembers()):
                deepest = dict(out)
    if not deepest:
        raise SystemExit("no layer holds nova/version.py")
    return deepest


def _random_files(root: str, total: int, size: int = MiB) -> list[Entry]:
    return [Entry(f"{root}/blob{n:04d}.bin", "file", 0o644, data=os.urandom(size)) for n in range(max(1, total // size))]


def large_set(client: RegistryClient, count: int, scale: float) -> list[Image]:
    """``count`` images: base (busybox, patch), os filler, the nova code in a big layer, two upper layers."""
    mb = lambda n: int(n * scale * MiB)  # noqa: E731
    base = stored(with_parents(base_entries({"nova": 42400})))
    os_layer = stored(with_parents([folder("usr/share/os")] + _random_files("usr/share/os", mb(250))))
    code = stored(with_parents([text(f"{SITE[1:]}/nova/__init__.py", '"""nova"""\n'),
                                text(f"{SITE[1:]}/nova/version.py", version_text("nova"))]
                               + _random_files(f"{SITE[1:]}/nova/data", mb(200))))
    upper = stored(with_parents(_random_files("opt/upper", mb(60))))
    seeds: list[SeedImage] = []
    out: list[Image] = []
    for i in range(count):
        own = stored(with_parents([text("etc/apex-bench/image", f"large{i}\n")]))
        layers = (base, os_layer, code, upper, own)
        config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                             "config": {"User": "nova", "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
                             "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
                             "history": [{"created_by": "bench"} for _ in layers]}, sort_keys=True).encode()
        seeds.append(SeedImage(f"tripleomaster/centos-binary-large{i}", TAG, layers, config))
        out.append(Image(seeds[-1].repository, "nova", down_to_holder(layers)))
    push_seeds(client, seeds)
    return out


def stored(entries: list) -> Layer:
    """A layer whose gzip stores rather than compresses (random bytes do not compress; fast to make)."""
    made = layer_of(entries)
    raw = zlib.decompress(made.blob, 31)
    return Layer(gzip.compress(raw, compresslevel=0, mtime=0), made.diff_id)


# -- the methods -----------------------------------------------------------------------------

def context_for(work: Path, image: Image, registry: str) -> Path:
    """A build context as patch-containers writes it: the Dockerfile and the patch."""
    context = work / image.repository.replace("/", "_")
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy(PATCH, context / "01-nova.patch")
    base = f"{registry}/{image.repository}:{TAG}"
    patches = [ImagePatch("01-nova.patch", SITE, "openstack/nova", source="bench")]
    (context / "Dockerfile").write_text(render_dockerfile(base, image.user, patches, image_labels(base, patches)))
    return context


def native(registry: str, images: list[Image], work: Path, tag: str) -> dict:
    """Our builder as its own process; its JSON report."""
    argv = [sys.executable, __file__, "--native", registry, tag, str(work), *[i.repository for i in images]]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"native failed:\n{done.stderr}")
    return json.loads(done.stdout)


def native_main(registry: str, tag: str, work: Path, repositories: list[str]) -> int:
    from apex_tools.registry.native import LayerCache, NativeImage, build_all, push_built

    start = time.perf_counter()
    client = RegistryClient(registry, tls="http")
    cache = LayerCache(client)
    work_items = []
    for repository in repositories:
        digest = client.head_manifest(repository, TAG)[0]
        steps = (PatchStep(PATCH, SITE, 1, "openstack/nova bench"),)
        base = f"{registry}/{repository}:{TAG}"
        patches = [ImagePatch("01-nova.patch", SITE, "openstack/nova", source="bench")]
        work_items.append((repository, digest, base, NativeImage(repository, steps, tuple(image_labels(base, patches)))))
    built = build_all(client, cache, JOBS, work_items)
    _, uploads = push_built(client, built, {b.image: [tag] for b in built}, JOBS)
    print(json.dumps({"seconds": time.perf_counter() - start, "bytes_read": cache.bytes_read,
                      "layers_read": cache.layers_read, "uploads": uploads, "rss": peak_rss()}))
    return 0


def engine(name: str) -> Callable[[str, list[Image], Path, str], dict]:
    def run(registry: str, images: list[Image], work: Path, tag: str) -> dict:
        from apex_tools.builders import get_builder

        builder = get_builder(name, [registry])
        for image in images:
            ref = str(ImageRef(registry, image.repository, tag))
            builder.build(context_for(work, image, registry), [ref])
            builder.push(ref)
        return {}
    return run


def forget(registry: str, images: list[Image]) -> None:
    """Empty the engines' caches of these images (bases and results), so each method starts cold."""
    refs = [f"{registry}/{i.repository}" for i in images]
    listed = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                            text=True).stdout.split()
    doomed = [r for r in listed if r.startswith(tuple(refs))]
    if doomed:
        subprocess.run(["docker", "rmi", "-f", *doomed], capture_output=True)
    listed = subprocess.run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL).stdout.split()
    doomed = [r for r in listed if r.startswith(tuple(refs))]
    if doomed:
        subprocess.run(["buildah", "rmi", "-f", *doomed], capture_output=True, stdin=subprocess.DEVNULL)


def pipeline(registry: str, images: list[Image], work: Path, tag: str) -> dict:
    """skopeo copy -> umoci unpack -> patch -> umoci repack -> skopeo copy, per image."""
    for image in images:
        layout = work / "oci" / image.repository.replace("/", "_")
        bundle = work / "bundle" / image.repository.replace("/", "_")
        shutil.rmtree(layout, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        layout.parent.mkdir(parents=True, exist_ok=True)
        src = f"docker://{registry}/{image.repository}"
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"{src}:{TAG}", f"oci:{layout}:base"],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:base", str(bundle)], check=True, capture_output=True)
        with PATCH.open("rb") as patch:
            subprocess.run(["patch", "-p1", "--forward", "--fuzz=0", "--batch", "--no-backup-if-mismatch", "-r", "-"],
                           cwd=bundle / "rootfs" / SITE.lstrip("/"), stdin=patch, check=True, capture_output=True)
        subprocess.run(["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)], check=True, capture_output=True)
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--format", "v2s2",
                        f"oci:{layout}:{tag}", f"{src}:{tag}"], check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(bundle, ignore_errors=True)
    return {}


METHODS: dict[str, Callable[[str, list[Image], Path, str], dict]] = {
    "native": native, "docker": engine("docker"), "buildah": engine("buildah"), "skopeo+umoci": pipeline,
}


def log_traffic(registry: Registry, since: int) -> tuple[int, int]:
    """(bytes of blobs served by GET, blob uploads completed) in the registry's log since ``since``."""
    time.sleep(0.05)
    with registry.log.open("rb") as handle:
        handle.seek(since)
        lines = handle.read().decode(errors="replace").splitlines()
    read = uploads = 0
    for line in lines:
        if 'msg="response completed"' not in line:
            continue
        uri = re.search(r'http\.request\.uri="([^"]*)"', line)
        method = re.search(r"http\.request\.method=(\w+)", line)
        if not uri or not method:
            continue
        if method.group(1) == "GET" and "/blobs/sha256:" in uri.group(1):
            written = re.search(r"http\.response\.written=(\d+)", line)
            read += int(written.group(1)) if written else 0
        elif method.group(1) == "PUT" and "/blobs/uploads/" in uri.group(1):
            uploads += 1
    return read, uploads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="smaller large images (for CI)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    parser.add_argument("--native", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.native:
        registry, tag, work, *repositories = args.native
        return native_main(registry, tag, Path(work), repositories)

    methods = [m for m in args.methods.split(",") if m]
    count, scale = (1, 0.125) if args.short else (3, 1.0)
    with tempfile.TemporaryDirectory(prefix="apex-bench-rebuild-") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry")
        try:
            print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; seeding ...", flush=True)
            sets = {"lab": lab_set(registry.client, work), "large": large_set(registry.client, count, scale)}
            ok = True
            for name, images in sets.items():
                ok &= run_set(name, images, registry, methods, work / name)
        finally:
            forget(registry.address, [i for s in locals().get("sets", {}).values() for i in s])
            registry.stop()
    print("\ngoals:", "met" if ok else "NOT met")
    return 0


def run_set(name: str, images: list[Image], registry: Registry, methods: list[str], work: Path) -> bool:
    client = registry.client
    sizes: dict[str, int] = {}
    for image in images:
        manifest = client.get_manifest(image.repository, TAG).json()
        sizes.update({layer["digest"]: layer["size"] for layer in manifest["layers"]})
    total = sum(sizes.values())
    depth = {d: s for i in images for d, s in i.depth_bytes.items()}
    bound = sum(depth.values())
    print(f"\n== {name}: {len(images)} images, {total / MiB:.1f} MiB of unique layers; "
          f"layers down to the patched file's holder: {bound / MiB:.3f} MiB")
    print(f"{'method':<14}{'s':>8}{'native is':>11}{'read MiB':>10}{'read/size':>11}{'uploads':>9}")
    times: dict[str, float] = {}
    extra: dict[str, dict] = {}
    for method in methods:
        forget(registry.address, images)
        mark = registry.mark()
        start = time.perf_counter()
        slug = method.replace("+", "-")
        extra[method] = METHODS[method](registry.address, images, work / slug, f"apex-{slug}")
        times[method] = time.perf_counter() - start
        if "seconds" in extra[method]:
            # As the engine builders are timed: the work, in a process already running (push-registry's).
            extra[method]["process"], times[method] = times[method], extra[method]["seconds"]
        read, uploads = log_traffic(registry, mark)
        extra[method].update(read=read, uploads_logged=uploads)
    forget(registry.address, images)
    mine = times.get("native")
    for method in methods:
        data = extra[method]
        ratio = f"{times[method] / mine:>10.1f}x" if mine else f"{'':>11}"
        print(f"{method:<14}{times[method]:>8.2f}{ratio}{data['read'] / MiB:>10.3f}{data['read'] / total:>11.3f}"
              f"{data['uploads_logged']:>9}")
    ok = True
    if mine:
        data = extra["native"]
        others = ", ".join(f"{m} {times[m] / data['process']:.1f}x" for m in methods if m != "native")
        print(f"native: {data['layers_read']} layers read ({data['bytes_read']} bytes; bound {bound}), "
              f"{data['uploads']} blobs uploaded, peak RSS {data['rss'] / MiB:.0f} MiB; as a fresh process "
              f"(interpreter and imports included) {data['process']:.2f} s" + (f": {others}" if others else ""))
        checks = [("bytes read <= layers down to the holder", data["bytes_read"] <= bound)]
        if "docker" in times:
            checks.append((f"native >= {GOAL_DOCKER:g}x docker ({times['docker'] / mine:.1f}x)",
                           times["docker"] / mine >= GOAL_DOCKER))
        if "skopeo+umoci" in times:
            checks.append((f"native >= {GOAL_PIPELINE:g}x skopeo+umoci ({times['skopeo+umoci'] / mine:.1f}x)",
                           times["skopeo+umoci"] / mine >= GOAL_PIPELINE))
        for what, met in checks:
            print(f"  {'met' if met else 'NOT met'}: {what}")
            ok &= met
    return ok


if __name__ == "__main__":
    sys.exit(main())
