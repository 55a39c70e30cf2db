"""The lab's upstream registry content: small kolla-shaped service images, made without any pull.

Every image the deployment selects (``deployment_images``) is pushed straight through the
registry v2 API: a shared base layer (busybox, GNU patch and its libc, users), one layer per
OpenStack project the image carries (a real code tree at the project's install path, where the
bundled patches apply) and a small layer of its own. Layers are generated deterministically, so
the same selection gives the same digests every time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from apex_tools.core.settings import short_name
from apex_tools.lab.rootfs import Entry, base_entries, folder, link, text, with_parents
from apex_tools.patching.patches import ProjectTable
from apex_tools.registry.client import DOCKER_MANIFEST, Manifest, RegistryClient, sha256_digest
from apex_tools.registry.deployment import DeploymentImage
from apex_tools.registry.native import push_blobs

CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CREATED = "2026-01-01T00:00:00Z"
FIRST_UID = 42400  # kolla's service users start here
# Bump when what the images hold changes, so a lab seeded before is seeded again.
RECIPE = 3
# Kolla installs python code in a virtualenv reached through a symbolic link (see venv_link).
VENV = "var/lib/kolla/venv/lib"


@dataclass(frozen=True)
class Layer:
    """A gzipped tar layer and the digest of its uncompressed tar (the config's diff_id)."""

    blob: bytes
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.blob)


@dataclass(frozen=True)
class SeedImage:
    """One image to push: repository, tag, its layers and config blob."""

    repository: str
    tag: str
    layers: tuple[Layer, ...]
    config: bytes

    def manifest(self) -> Manifest:
        body = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "size": len(self.config), "digest": sha256_digest(self.config)},
            "layers": [{"mediaType": LAYER_TYPE, "size": len(layer.blob), "digest": layer.digest}
                       for layer in self.layers],
        }
        raw = json.dumps(body, indent=3, sort_keys=True).encode()
        return Manifest(DOCKER_MANIFEST, sha256_digest(raw), raw)


def layer_of(entries: Sequence[Entry]) -> Layer:
    """A reproducible layer: entries in order, times 0, owner root, gzip without name or time."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, entry.mode, 0, 0, "root", "root"
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
                tar.addfile(info)
            else:
                data = entry.content()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = raw.getvalue()
    return Layer(gzip.compress(data, compresslevel=6, mtime=0), sha256_digest(data))


def module_of(project: str) -> str:
    """The Python package a project installs: ``os-brick`` → ``os_brick``, ``python-novaclient`` → ``novaclient``."""
    return short_name(project).removeprefix("python-").replace("-", "_").replace(".", "_")


def venv_link(install_dir: str) -> tuple[str, str]:
    """Kolla's layout for a python install path: its ``pythonX.Y`` folder is a symbolic link into a
    virtualenv (``usr/lib/python3.9 -> ../../var/lib/kolla/venv/lib/python3.9``); (link, link target).

    So the lab's patches go through a symlinked parent folder, as they do in kolla's images.
    """
    folder = posixpath.dirname(install_dir.strip("/"))
    real = posixpath.join(VENV, posixpath.basename(folder))
    return folder, posixpath.relpath(real, posixpath.dirname(folder))


def real_install_dir(install_dir: str) -> str:
    """Where a python install path really is in the lab's images (behind ``venv_link``)."""
    folder, target = venv_link(install_dir)
    return posixpath.normpath(posixpath.join(posixpath.dirname(folder), target, posixpath.basename(install_dir)))


def code_tree(project: str, install_dir: str, python: bool) -> list[Entry]:
    """The stand-in code of ``project`` where it is installed: a package with a ``version.py``."""
    root = f"{real_install_dir(install_dir)}/{module_of(project)}" if python else install_dir.strip("/")
    name = short_name(project)
    return [
        folder(root),
        text(f"{root}/__init__.py", f'"""{name}: apex-tools lab stand-in code tree."""\n'),
        text(f"{root}/version.py", version_text(name)),
    ]


def version_text(name: str) -> str:
    """``version.py`` of a stand-in project (the bundled python patch changes nova's)."""
    return (f'"""Version of {name} (apex-tools lab stand-in)."""\n\n'
            "PATCHED = False\n\n\n"
            "def version_string():\n"
            '    return "lab-patched" if PATCHED else "lab"\n')


def user_of(image: DeploymentImage) -> str:
    """The image's service user, kolla style (``nova-api`` → ``nova``); root for the Ceph daemon."""
    return "root" if "/" in image.name else image.name.split("-")[0]


def seed_images(images: Sequence[DeploymentImage], projects: Callable[[str], tuple[str, ...]],
                table: ProjectTable, os_version: str, python_path: str = "") -> list[SeedImage]:
    """The images to push for ``images`` (``projects(name)``: the python projects an image carries)."""
    users = sorted({user_of(i) for i in images} - {"root"})
    where = {p: table.locate(p, os_version, python_path) for i in images for p in projects(i.name)}
    links = sorted({venv_link(w.path) for w in where.values() if w.python})
    base = layer_of(with_parents(base_entries({u: FIRST_UID + n for n, u in enumerate(users)})
                                 + [link(path, target) for path, target in links]))
    project_layers: dict[str, Layer] = {}
    out = []
    for image in images:
        layers = [base]
        for project in projects(image.name):
            if project not in project_layers:
                project_layers[project] = layer_of(with_parents(code_tree(project, where[project].path,
                                                                          where[project].python)))
            layers.append(project_layers[project])
        layers.append(layer_of(with_parents([text("etc/apex-lab/image", f"{image.source}\n")])))
        user = user_of(image)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": CREATED,
            "config": {"User": user, "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"],
                       "Labels": {"name": image.name, "org.opencontainers.image.vendor": "apex-tools lab"}},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": CREATED, "created_by": "apex-tools lab"} for _ in layers],
        }
        out.append(SeedImage(image.source.repository, image.source.reference, tuple(layers),
                             json.dumps(config, sort_keys=True).encode()))
    return out


def seed_fingerprint(seeds: Sequence[SeedImage]) -> str:
    """One digest over every image's repository, tag and manifest."""
    digest = hashlib.sha256(f"recipe {RECIPE}\n".encode())
    for seed in seeds:
        digest.update(f"{seed.repository}:{seed.tag} {seed.manifest().digest}\n".encode())
    return digest.hexdigest()


def push_seeds(client: RegistryClient, seeds: Sequence[SeedImage]) -> int:
    """Push every image not already there with its manifest; blobs another repository has are mounted.

    Returns how many images were pushed.
    """
    holder: dict[str, str] = {}  # blob digest → a repository that has it
    pushed = 0
    for seed in seeds:
        manifest = seed.manifest()
        head = client.head_manifest(seed.repository, seed.tag)
        if head is not None and head[0] == manifest.digest:
            continue
        blobs = [seed.config] + [layer.blob for layer in seed.layers]
        push_blobs(client, seed.repository, blobs, holder)
        for blob in blobs:
            holder.setdefault(sha256_digest(blob), seed.repository)
        client.put_manifest(seed.repository, seed.tag, manifest)
        pushed += 1
    return pushed
