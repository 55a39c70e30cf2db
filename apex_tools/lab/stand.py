"""Bring the lab's stand-ins up and down: the image mirror, the upstream registry and its seed.

Their addresses come from the configuration (``config/lab.yaml``, overridable like any key):
``upstream.images_url`` is the mirror, ``upstream.registry`` (and ``upstream.ceph_registry``) the
upstream registry, ``registry.address`` the local registry push-registry starts. Each must be
on loopback. Everything lives under ``<work_dir>/lab/``; a stand-in already running is left
alone, and ``lab_down`` stops only what this work dir started (by pidfile).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apex_tools.catalog.images import load_catalog

from apex_tools.core import yamlfile
from apex_tools.core.config import Layer, Options
from apex_tools.core.errors import LabError
from apex_tools.core.resources import data_path
from apex_tools.core.run import RunContext
from apex_tools.core.state import atomic_write
from apex_tools.core.workdir import OVERCLOUD_TAR, UNDERCLOUD_QCOW2
from apex_tools.http.download import join_url
from apex_tools.lab import artifacts, guest, images, libvirtd
from apex_tools.lab.mirror import MirrorPaths, answers, mirror_pid, start_mirror, stop_mirror
from apex_tools.patching.patches import load_projects
from apex_tools.registry import server
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.deployment import deployment_images, naming_of

LAB_DIR = "lab"
# qemu's user-mode network: the address at which the VM reaches this host's loopback.
GUEST_HOST_ADDRESS = "10.0.2.2"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
VM_RECORD = "vm.json"


def lab_config_path() -> Path:
    """The bundled lab configuration, ``config/lab.yaml``."""
    return data_path("config", "lab.yaml")


def lab_layer() -> Layer:
    """``config/lab.yaml`` as a config file layer (what ``-f config/lab.yaml`` loads)."""
    path = lab_config_path()
    return Layer(f"lab file {path}", yamlfile.load_mapping(path, "lab configuration", empty_ok=True))


def vm_layer() -> Layer:
    """``config/lab-vm.yaml`` (what ``--vm`` adds on top of the lab's file)."""
    path = data_path("config", "lab-vm.yaml")
    return Layer(f"lab file {path}", yamlfile.load_mapping(path, "lab configuration", empty_ok=True))


def vm_derived_layer(options: Options) -> Layer:
    """The VM lab's keys that follow the work dir and the registry's port (below ``APEX_*``)."""
    root = libvirt_root(options)
    _, port = server.split_address(options.registry.address)
    return Layer("lab --vm (derived from work_dir and registry.address)", {"undercloud": {
        "pool_path": str(root / "images"), "ssh_key": str(root / "id_rsa"),
        "registry_remote": f"{GUEST_HOST_ADDRESS}:{port}"}})


def libvirt_root(options: Options) -> Path:
    """Where the VM lab keeps libvirtd's pid and log, the VM's key, volume and console log."""
    return lab_root(options) / "libvirt"


@dataclass(frozen=True)
class StandIn:
    """One stand-in's state after ``lab_up``/``lab_down``: name, address, what happened."""

    name: str
    address: str
    status: str  # started | running | left alone | stopped | not running | generated | seeded | current
    detail: str = ""


def lab_root(options: Options) -> Path:
    return Path(options.work_dir) / LAB_DIR


def mirror_paths(options: Options) -> MirrorPaths:
    return MirrorPaths(lab_root(options) / "mirror")


def upstream_root(options: Options) -> Path:
    """The upstream registry's folder (``server.paths`` puts its config, data and pid under it)."""
    return lab_root(options) / "upstream"


def _loopback(host: str, key: str, value: str) -> str:
    host = host.strip("[]")
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if not loop:
        raise LabError(f"{key}: {value!r} is not on loopback; the lab's stand-ins bind 127.0.0.0/8 or ::1 only",
                       f"set {key} to a 127.0.0.1 address (config/lab.yaml has the defaults)")
    return host


def mirror_address(run: RunContext) -> tuple[str, int, str]:
    """(host, port, url path) of the mirror from ``upstream.images_url`` (``{os_version}`` filled)."""
    url = run.expand(run.options.upstream.images_url)
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise LabError(f"upstream.images_url: {url!r} is not http://<loopback>:<port>/...",
                       "the lab's mirror is plain HTTP on a fixed loopback port (see config/lab.yaml)")
    host = _loopback(parts.hostname, "upstream.images_url", url)
    return host, parts.port, parts.path


def _registry(address: str, key: str) -> str:
    host, _ = server.split_address(address)
    _loopback(host, key, address)
    return address


def _artifacts(run: RunContext, vm: bool = False) -> list[StandIn]:
    """Generate the mirror's files once (a record says which recipe made them); for the VM lab
    overcloud-full.tar carries this host's kernel and initrd and undercloud.qcow2 is served too."""
    _host, _port, path = mirror_address(run)
    folder = mirror_paths(run.options).docroot / path.strip("/")
    record = lab_root(run.options) / "artifacts.json"
    boot = guest.kernel_files()[:2] if vm else None
    want = {"recipe": artifacts.RECIPE, "folder": str(folder),
            **({"boot": [f"{p} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in boot]} if boot else {})}
    try:
        current = json.loads(record.read_text()) == want
    except (OSError, ValueError):
        current = False
    names = [OVERCLOUD_TAR, f"{OVERCLOUD_TAR}.md5"]
    if current and all((folder / n).is_file() for n in names):
        rows = [StandIn("mirror files", str(folder), "current")]
    else:
        written = artifacts.write_artifacts(folder, boot)
        atomic_write(record, json.dumps(want, indent=1, sort_keys=True) + "\n")
        rows = [StandIn("mirror files", str(folder), "generated", ", ".join(written))]
    if vm:
        rows.append(_guest_image(folder))
    return rows


def _guest_image(folder: Path) -> StandIn:
    """undercloud.qcow2 (and its .md5) on the mirror, from the machine-wide cache (built there once)."""
    dest = folder / UNDERCLOUD_QCOW2
    sidecar = folder / f"{UNDERCLOUD_QCOW2}.md5"
    before = dest.stat().st_mtime_ns if dest.is_file() else None
    built = guest.ensure_image(dest, DEBIAN_MIRROR)
    if built or before != dest.stat().st_mtime_ns or not sidecar.is_file():
        atomic_write(sidecar, f"{artifacts.md5_of(dest)}  {UNDERCLOUD_QCOW2}\n", durable=False)
        how = "built (debootstrap) and served" if built else f"served from the cache {guest.cache_dir()}"
        return StandIn("undercloud image", str(dest), "generated", how)
    return StandIn("undercloud image", str(dest), "current")


def _mirror(run: RunContext) -> StandIn:
    host, port, path = mirror_address(run)
    paths = mirror_paths(run.options)
    address = f"{host}:{port}"
    if answers(host, port):
        pid = mirror_pid(paths)
        if pid is None:
            return StandIn("image mirror", address, "left alone", "something else answers there")
        return StandIn("image mirror", address, "running", f"pid {pid}")
    check = join_url(f"http://{address}{path}", f"{OVERCLOUD_TAR}.md5")
    pid = start_mirror(paths, host, port, check)
    return StandIn("image mirror", address, "started", f"pid {pid}, files under {paths.docroot}")


def _registry_stand_in(name: str, address: str, root: Path) -> tuple[StandIn, RegistryClient]:
    client = RegistryClient(address, tls="http", retries=1)
    started = server.ensure_local_registry(address, root, client, start=True)
    if started.started:
        return StandIn(name, address, "started", f"pid {started.pid}"), client
    if started.pid is None:
        return StandIn(name, address, "left alone", "something else answers there"), client
    return StandIn(name, address, "running", f"pid {started.pid}"), client


def lab_seeds(run: RunContext) -> list[images.SeedImage]:
    """The lab's upstream images for the run's deployment (generated, not pushed)."""
    catalog = load_catalog(run.os_version)
    selected = deployment_images(catalog, run.deploy_settings, naming_of(run))

    def projects(name: str) -> tuple[str, ...]:
        return catalog.images[name].projects if name in catalog.images else ()

    return images.seed_images(selected, projects, load_projects(), run.os_version, run.options.patching.python_path)


def _seed(run: RunContext, client: RegistryClient) -> StandIn:
    """Push the deployment's images to the upstream registry unless the same set is there."""
    catalog = load_catalog(run.os_version)
    selected = deployment_images(catalog, run.deploy_settings, naming_of(run))
    strays = sorted({str(i.source) for i in selected if i.source.registry != client.host})
    if strays:
        raise LabError(f"images not served by the lab's upstream registry {client.host}: {', '.join(strays)}",
                       "set upstream.registry and upstream.ceph_registry to the same loopback address")
    key = {"recipe": images.RECIPE, "registry": client.host, "python_path": run.options.patching.python_path,
           "images": [str(i.source) for i in selected],
           "projects": {i.name: list(catalog.images[i.name].projects) if i.name in catalog.images else []
                        for i in selected}}
    record = upstream_root(run.options) / "seed.json"
    try:
        recorded = json.loads(record.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded == key:
        return StandIn("upstream images", client.host, "current", f"{len(selected)} image(s)")
    seeds = lab_seeds(run)
    pushed = images.push_seeds(client, seeds)
    atomic_write(record, json.dumps(key, indent=1, sort_keys=True) + "\n")
    return StandIn("upstream images", client.host, "seeded", f"{pushed} of {len(seeds)} image(s) pushed")


def lab_up(run: RunContext, vm: bool = False) -> list[StandIn]:
    """Generate (once) and start what is not running; leave running stand-ins alone.

    The local registry is started here too, exactly as push-registry would start it (same
    pidfile and storage under the work dir), so that a lab whose stand-ins were restarted (a
    container's run ended) still finds every image in place. ``vm``: also the guest image and
    libvirtd (the undercloud target defines and boots the VM).
    """
    local = _registry(run.registry_address, "registry.address")
    upstream = _registry(run.options.upstream.registry, "upstream.registry")
    mirror_address(run)
    out = [*_artifacts(run, vm), _mirror(run)]
    row, client = _registry_stand_in("upstream registry", upstream, upstream_root(run.options))
    out += [row, _seed(run, client)]
    out.append(_registry_stand_in("local registry", local, Path(run.options.work_dir))[0])
    if vm:
        root = libvirt_root(run.options)
        out += [StandIn(name, str(libvirtd.RUN_DIR), status, detail)
                for name, status, detail in libvirtd.ensure_daemons(root)]
        # What lab down destroys and undefines: the names the undercloud target will define.
        uc = run.options.undercloud
        atomic_write(root / VM_RECORD, json.dumps({"name": uc.name, "pool": uc.pool, "pool_path": str(uc.pool_path),
                                                   "ssh_forward": uc.ssh_forward}, indent=1, sort_keys=True) + "\n")
    return out


def lab_down(options: Options) -> list[StandIn]:
    """Stop the stand-ins this work dir started (mirror, upstream registry, local registry)."""
    paths = mirror_paths(options)
    out = [StandIn("image mirror", str(paths.root), "stopped" if stop_mirror(paths) else "not running")]
    stopped = server.stop_local_registry(upstream_root(options))
    out.append(StandIn("upstream registry", str(upstream_root(options)), "stopped" if stopped else "not running"))
    stopped = server.stop_local_registry(Path(options.work_dir))
    out.append(StandIn("local registry", str(Path(options.work_dir) / "registry"),
                       "stopped" if stopped else "not running"))
    vm = _vm_record(options)
    if vm is not None:
        rows = libvirtd.tear_down(vm["name"], vm["pool"], libvirt_root(options))
        out += [StandIn(name, str(libvirtd.RUN_DIR), status, detail) for name, status, detail in rows]
        (libvirt_root(options) / VM_RECORD).unlink()
    return out


def _vm_record(options: Options) -> dict[str, Any] | None:
    """What ``lab up --vm`` recorded for this work dir (None: the lab never ran with --vm)."""
    try:
        data = json.loads((libvirt_root(options) / VM_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lab_status(options: Options) -> list[StandIn]:
    """Each stand-in (running with its pid, or not) and, for a VM lab, libvirtd and the VM."""
    out = [StandIn(name, "", "running" if pid else "not running", f"pid {pid}" if pid else "")
           for name, pid in lab_running(options).items()]
    vm = _vm_record(options)
    if vm is not None:
        out += [StandIn(name, str(libvirtd.RUN_DIR), "running" if pid else "not running", f"pid {pid}" if pid else "")
                for name, pid in libvirtd.daemon_pids(libvirt_root(options)).items()]
        state, address = libvirtd.domain_state(vm["name"], vm.get("ssh_forward", 0))
        out.append(StandIn(f"undercloud VM {vm['name']}", address, state,
                           f"SSH {address}" if address and state == "running" else ""))
    return out


def lab_running(options: Options) -> dict[str, int | None]:
    """The pid of each stand-in this work dir started and still runs (None: not running)."""
    return {
        "image mirror": mirror_pid(mirror_paths(options)),
        "upstream registry": server.local_registry_pid(upstream_root(options)),
        "local registry": server.local_registry_pid(Path(options.work_dir)),
    }
