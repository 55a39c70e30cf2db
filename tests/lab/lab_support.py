"""Running the lab from tests and the benchmark: a temp work dir, free loopback ports (never a
developer's running lab on config/lab.yaml's fixed ones), the ``apex`` command, and a cleanup
that stops every stand-in even when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apex_tools.core.config import Options, env_layer, resolve
from apex_tools.lab.stand import lab_config_path, lab_down, lab_layer, vm_derived_layer, vm_layer
from apex_tools.targets import ALL, registry

from conftest import free_port

CHAIN = ("fetch-images", "patch-containers", "ceph-loop", "push-registry")
NOVA_IMAGES = ("nova-api", "nova-compute", "nova-conductor", "nova-libvirt", "nova-novncproxy", "nova-scheduler")


def lab_env(root: Path) -> dict[str, str]:
    """The environment of a lab under ``root``: its own work/image dirs and free ports."""
    mirror, upstream, local = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_") or k == "APEX_TEST_REQUIRE_ALL"}
    env.update({
        "APEX_WORK_DIR": str(root / "work"),
        "APEX_IMAGE_DIR": str(root / "images"),
        "APEX_UPSTREAM_IMAGES_URL": f"http://127.0.0.1:{mirror}/{{os_version}}/rdo_trunk/current-tripleo/",
        "APEX_UPSTREAM_REGISTRY": f"127.0.0.1:{upstream}",
        "APEX_UPSTREAM_CEPH_REGISTRY": f"127.0.0.1:{upstream}",
        "APEX_REGISTRY_ADDRESS": f"127.0.0.1:{local}",
        "LIBGUESTFS_BACKEND": os.environ.get("LIBGUESTFS_BACKEND", "direct"),
        "LIBGUESTFS_BACKEND_SETTINGS": os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"),
    })
    return env


def lab_options(env: dict[str, str]) -> Options:
    """The options ``apex deploy --lab`` sees in ``env``."""
    return resolve([lab_layer(), env_layer(env)]).options


def vm_lab_options(env: dict[str, str]) -> Options:
    """The options ``apex deploy --lab --vm`` sees in ``env``."""
    layers = [lab_layer(), vm_layer()]
    derived = vm_derived_layer(resolve([*layers, env_layer(env)]).options)
    return resolve([*layers, derived, env_layer(env)]).options


def apex(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 900,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``apex ARGS`` (this interpreter's package) in ``cwd`` with ``env``; stdin is /dev/null."""
    proc = subprocess.run([sys.executable, "-m", "apex_tools", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"apex {' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def json_documents(text: str) -> list[Any]:
    """Every JSON document printed one after another (one per task with --json)."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    while True:
        start = min((i for i in (text.find("[", pos), text.find("{", pos)) if i >= 0), default=-1)
        if start < 0:
            return out
        value, pos = decoder.raw_decode(text, start)
        out.append(value)


def placeholders() -> set[str]:
    """Targets still "not built yet" on this branch (the lab runs around them until they land)."""
    return {name for name, fn in registry().items() if fn.__name__ == "placeholder"}


def run_chain(env: dict[str, str], cwd: Path) -> dict[str, dict[str, Any]]:
    """``apex deploy --lab`` (every target); target → its JSON summary row.

    Where ``undercloud`` or ``deploy`` is still a placeholder, ``deploy`` would stop at it: the
    lab is brought up and the built targets run in the chain's order instead, in one ``apex``
    process under the same configuration (``-f config/lab.yaml``).
    """
    missing = placeholders()
    if not missing:
        rows = json_documents(apex(["deploy", "--lab", "--json"], env, cwd).stdout)[0]
    else:
        # One process, as deploy --lab is: Invoke runs lab.up, then each target, in order.
        args = ["-f", str(lab_config_path()), "lab", "up", "--quiet"]
        for name in (n for n in ALL if n not in missing):
            args += [name, "--json"]
        rows = [row for doc in json_documents(apex(args, env, cwd).stdout) for row in doc]
    return {row["target"]: row for row in rows}


@contextlib.contextmanager
def running_lab(root: Path) -> Iterator[dict[str, str]]:
    """A lab environment under ``root``; every stand-in it started is stopped afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    env = lab_env(root)
    try:
        yield env
    finally:
        lab_down(lab_options(env))
