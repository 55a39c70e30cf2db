"""Benchmark the disconnected bundle against what users would otherwise run, in one run.

Between loopback registries (Debian's docker-registry), on (a) many small kolla-shaped images
sharing base layers (the lab's shape) and (b) a few large ones:
  * ours: ``apex``'s export (registry → bundle folder, or a tar) then import (bundle → a fresh
    registry, started as apex starts it, so blobs go straight into its storage as
    bundle-import writes them), each as its own process (interpreter start and imports included),
  * skopeo: ``skopeo sync --dest dir`` (one process for every image) then a ``skopeo copy``
    loop ``dir:`` → the fresh registry, one image after another.
Also: the bundle's size against the unique blob bytes (and skopeo's folder's), each process's
peak RSS (flat in the bundle's size is the goal), every imported digest against upstream's.

Goals: bundle <= 1.02x the unique blob bytes; export + import >= 2x faster than the skopeo path;
peak RSS of the large set's processes <= 1.2x the small set's.

    python bench/bundle.py            # 45 small images + 3 large ones (256 MiB layers)
    python bench/bundle.py --short    # 16 small + 1 large (128 MiB), same columns (CI, ~16 s)

--short's large layer is 128 MiB, not less: below that the large set's ratio measures the start
of our two Python processes (~0.25 s each) against skopeo's Go binaries, not the copying.

Exits non-zero only when an imported digest differs from upstream's; a missed goal is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import push_registry as pr  # noqa: E402 - the seeding and the registries are push-registry bench's

from apex_tools.registry.client import RegistryClient  # noqa: E402

GOAL_SIZE = 1.02
GOAL_SPEED = 2.0
GOAL_RSS = 1.2
MiB = 2**20


# -- our two commands, run as children ----------------------------------------------------

def export_main(src: str, dest: Path, tar: bool, repos: list[str]) -> dict:
    from apex_tools.bundle.export import look_images, plan_bundle, write_bundle
    from apex_tools.bundle.layout import DirWriter, TarWriter
    from apex_tools.core.reference import ImageRef

    client = RegistryClient(src, tls="http")
    items = look_images([ImageRef.parse(f"{src}/{r}:{pr.TAG}") for r in repos], lambda _: client, 4)
    plan = plan_bundle(items, [], lambda _: client, {"os_version": "bench", "patches": []})
    if tar:
        with dest.open("wb") as handle:
            writer = TarWriter(handle)
            count, size, _ = write_bundle(plan, writer, 4)
            writer.close()
    else:
        count, size, _ = write_bundle(plan, DirWriter(dest), 4)
    return {"blobs": count, "bytes": size, "rss": pr.peak_rss()}


def import_main(source: Path, dst: str, tar: bool, work: Path) -> dict:
    from apex_tools.bundle.layout import open_bundle
    from apex_tools.bundle.load import LOADED, load_bundle, plan_import
    from apex_tools.bundle.storage import local_storage

    local = RegistryClient(dst, tls="http")
    reader = open_bundle(None, source) if tar else open_bundle(source, None)
    try:
        plan = plan_import(reader.document, local, lambda f: Path("/nonexistent"), 4)
        # As bundle-import decides: straight into the storage of the registry ``work`` started.
        storage, why = local_storage(dst, work, local)
        results = load_bundle(reader, plan, local, lambda f: Path("/nonexistent"), storage=storage)
    finally:
        reader.close()
    bad = [r for r in results if r.status != LOADED]
    if bad:
        raise SystemExit(f"import failed: {bad[0].detail}")
    return {"images": len(results), "rss": pr.peak_rss(), "direct": storage is not None, "how": why}


def child(*argv: str) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


# -- skopeo ---------------------------------------------------------------------------------

def skopeo_path(src: str, dst: str, repos: list[str], folder: Path) -> tuple[float, float]:
    """``skopeo sync`` every image into ``dir:`` folders, then ``skopeo copy`` each into ``dst``."""
    spec = folder.with_suffix(".yaml")
    spec.write_text(json.dumps({src: {"tls-verify": False, "images": {r: [pr.TAG] for r in repos}}}))
    started = time.perf_counter()
    subprocess.run(["skopeo", "sync", "--scoped", "--src", "yaml", "--dest", "dir", str(spec), str(folder)], check=True,
                   capture_output=True)
    synced = time.perf_counter() - started
    started = time.perf_counter()
    for repo in repos:
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"dir:{folder}/{src}/{repo}:{pr.TAG}",
                        f"docker://{dst}/{repo}:{pr.TAG}"], check=True, capture_output=True)
    return synced, time.perf_counter() - started


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def same_digests(src: RegistryClient, dst: RegistryClient, repos: list[str]) -> bool:
    return all(src.head_manifest(r, pr.TAG)[0] == (dst.head_manifest(r, pr.TAG) or ("",))[0] for r in repos)


def measure(name: str, src: pr.Registry, repos: list[str], unique: int, work: Path) -> dict:
    out: dict = {"set": name, "images": len(repos), "unique": unique}
    for tar in (False, True):
        label = "tar" if tar else "dir"
        bundle = work / f"{name}-bundle{'.tar' if tar else ''}"
        dst = pr.Registry(work / f"{name}-{label}-ours")
        try:
            out[f"export_{label}"], exported = child("--export", src.address, str(bundle), str(int(tar)), *repos)
            out[f"import_{label}"], imported = child("--import", str(bundle), dst.address, str(int(tar)), str(dst.work))
            out[f"direct_{label}"] = imported["direct"]
            out[f"rss_{label}"] = max(exported["rss"], imported["rss"])
            out[f"size_{label}"] = bundle.stat().st_size if tar else tree_bytes(bundle)
            out[f"digests_{label}"] = same_digests(src.client, dst.client, repos)
        finally:
            dst.stop()
            shutil.rmtree(bundle, ignore_errors=True) if not tar else bundle.unlink(missing_ok=True)
    dst = pr.Registry(work / f"{name}-skopeo")
    folder = work / f"{name}-skopeo-dir"
    try:
        out["sync"], out["copy"] = skopeo_path(src.address, dst.address, repos, folder)
        out["size_skopeo"] = tree_bytes(folder)
        out["digests_skopeo"] = same_digests(src.client, dst.client, repos)
    finally:
        dst.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return out


def report(rows: list[dict]) -> tuple[bool, bool]:
    """Print the table; (every goal met, every digest kept)."""
    ok = kept = True
    print(f"{'set':<6} {'imgs':>4} {'unique':>9} {'ours dir exp+imp':>17} {'ours tar exp+imp':>17} "
          f"{'skopeo sync+copy':>17} {'speed×':>7} {'size×':>6} {'skopeo size×':>12} {'peak RSS':>9}")
    for r in rows:
        ours = r["export_dir"] + r["import_dir"]
        ours_tar = r["export_tar"] + r["import_tar"]
        theirs = r["sync"] + r["copy"]
        speed, size = theirs / ours, r["size_dir"] / r["unique"]
        print(f"{r['set']:<6} {r['images']:>4} {r['unique'] / MiB:>7.1f}Mi "
              f"{r['export_dir']:>7.2f}+{r['import_dir']:<5.2f}s {r['export_tar']:>7.2f}+{r['import_tar']:<5.2f}s "
              f"{r['sync']:>7.2f}+{r['copy']:<5.2f}s {speed:>6.2f}x {size:>5.3f}x {r['size_skopeo'] / r['unique']:>11.2f}x "
              f"{max(r['rss_dir'], r['rss_tar']) / MiB:>6.0f}Mi")
        print(f"       tar: {theirs / ours_tar:.2f}x the skopeo path, {r['size_tar'] / r['unique']:.3f}x the unique bytes; "
              f"digests kept: ours {r['digests_dir'] and r['digests_tar']}, skopeo dir: {r['digests_skopeo']}; "
              f"import into the registry's storage: {r['direct_dir'] and r['direct_tar']}")
        if speed < GOAL_SPEED:
            print(f"GOAL MISSED ({r['set']}): export + import {speed:.2f}x the skopeo path (goal >= {GOAL_SPEED}x)")
            ok = False
        if size > GOAL_SIZE:
            print(f"GOAL MISSED ({r['set']}): bundle {size:.3f}x the unique blob bytes (goal <= {GOAL_SIZE}x)")
            ok = False
        if not (r["digests_dir"] and r["digests_tar"]):
            print(f"FAILED ({r['set']}): an imported digest differs from upstream's")
            kept = False
    small, large = rows[0], rows[-1]
    rss = max(large["rss_dir"], large["rss_tar"]) / max(small["rss_dir"], small["rss_tar"])
    print(f"peak RSS, large set / small set: {rss:.2f}x for {large['unique'] / small['unique']:.1f}x the bytes")
    if rss > GOAL_RSS:
        print(f"GOAL MISSED: peak RSS grows with the bundle ({rss:.2f}x, goal <= {GOAL_RSS}x)")
        ok = False
    print("\ngoals:", "met" if ok else "NOT met")
    return ok, kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="small sizes, for CI")
    parser.add_argument("--export", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--import", dest="import_", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export:
        src, dest, tar, *repos = args.export
        print(json.dumps(export_main(src, Path(dest), tar == "1", repos)))
        return 0
    if args.import_:
        source, dst, tar, work = args.import_
        print(json.dumps(import_main(Path(source), dst, tar == "1", Path(work))))
        return 0
    if shutil.which("skopeo") is None:
        print("skopeo not found (apt-get install skopeo)", file=sys.stderr)
        return 1
    small, large, scale, large_mb = (16, 1, 0.25, 128) if args.short else (45, 3, 1.0, 256)
    work = Path(tempfile.mkdtemp(prefix="apex-bench-bundle-"))
    src = pr.Registry(work / "upstream")
    try:
        sets = pr.seed(src.client, small, large, scale, large_mb)
        rows = [measure(name, src, repos, unique, work) for name, (repos, unique) in sets.items()]
    finally:
        src.stop()
        shutil.rmtree(work, ignore_errors=True)
    # A missed speed goal is said loudly (a shared machine is noisy); a changed digest fails.
    _, kept = report(rows)
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
