"""The driver interface every undercloud implements."""

from __future__ import annotations

import contextlib
import logging
import shlex
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apex_tools.core.config import Options
from apex_tools.core.errors import UndercloudError
from apex_tools.registry.server import is_local_address, split_address
from apex_tools.undercloud.playbook import playbook_path, run_playbook
from apex_tools.core.workdir import KNOWN_HOSTS, UNDERCLOUD_DIR
from apex_tools.undercloud.ssh import (
    CommandResult,
    Forward,
    Session,
    SSHTarget,
    forget_host_key,
    local_forward,
    wait_for_ssh,
)

LOG = logging.getLogger(__name__)

# What TripleO leaves in the login user's home once `openstack undercloud install` succeeded.
INSTALLED_MARKER = "stackrc"


@dataclass(frozen=True)
class Lack:
    """One thing an undercloud lacks, and what to do about it."""

    what: str
    hint: str


@dataclass
class Provision:
    """What a driver must do to have its undercloud running (libvirt: the VM), from its check.

    ``actions`` are one-line plan entries (empty: nothing to do); ``fingerprint`` identifies
    what was provisioned (the domain definition) and goes into the target's fingerprint;
    ``data`` is kept in the target's record.
    """

    actions: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)


class Undercloud(ABC):
    """One undercloud, as the targets see it."""

    name = ""
    # False for the local driver: this host is what it is, the target configures nothing.
    configures = True
    # Seconds of refused connections after which the SSH wait gives up (None: the whole wait,
    # for a VM that is still booting).
    refused_wait: float | None = None

    def __init__(self, options: Options, registry_address: str) -> None:
        self.options = options
        self._registry_address = registry_address
        # The forward of the current ``reachable_registry`` block (None: direct, or no block).
        self.forward: Forward | None = None

    @property
    def registry_address(self) -> str:
        """The registry as the undercloud and the overcloud name it (``<installer ip>:8787``)."""
        return self._registry_address

    @property
    def registry_remote(self) -> str:
        """The registry as the undercloud itself reaches it (the SSH forward's far end)."""
        return self.options.undercloud.registry_remote or self.registry_address

    @abstractmethod
    def ssh(self) -> SSHTarget | None:
        """The SSH connection to the undercloud; None when it is this host (no SSH needed)."""

    def describe(self) -> str:
        """One line for plans and summaries: which undercloud this is."""
        target = self.ssh()
        return f"{self.name} undercloud {target}" if target else f"{self.name} undercloud (this host)"

    def needs_forward(self) -> bool:
        """True when this host reaches the registry only through an SSH forward."""
        mode = self.options.undercloud.forward_registry
        # Decided from the settings alone: asking a libvirt VM for its address is for later.
        if not self.configures or mode == "never":
            return False
        if mode == "always":
            return True
        return not is_local_address(split_address(self.registry_address)[0])

    @contextlib.contextmanager
    def reachable_registry(self) -> Iterator[str]:
        """The registry as ``host:port`` reachable from this host, for the length of the block.

        Where the registry address is not reachable from here (a NAT'd VM, a remote undercloud)
        an SSH local forward on 127.0.0.1 carries the traffic and is closed after.
        """
        if not self.needs_forward():
            yield self.registry_address
            return
        target = self.ssh()
        assert target is not None  # needs_forward is False for the local driver
        host, port = split_address(self.registry_remote)
        with local_forward(target, host, port) as forward:
            self.forward = forward
            LOG.info("registry %s reached through %s (SSH forward via %s)", self.registry_address,
                     forward.address, target)
            try:
                yield forward.address
            finally:
                self.forward = None

    def plan_provision(self, recorded: Mapping[str, Any] | None, recreate: bool) -> Provision:
        """What must happen for the undercloud to run; ``recorded`` is the last record's data."""
        return Provision()

    def provision(self, plan: Provision, progress: Any) -> list[str]:
        """Carry out ``plan``; the changes made, one line each."""
        return []

    def wait(self, on_wait: Callable[[str, float], None] | None = None) -> None:
        """Wait (bounded by ``undercloud.wait_timeout``) until the undercloud answers over SSH."""
        target = self.ssh()
        if target is not None:
            wait_for_ssh(target, self.options.undercloud.wait_timeout, on_wait=on_wait,
                         refused_timeout=self.refused_wait)

    def run(self, command: str, timeout: float = 120.0) -> CommandResult:
        """Run a shell command on the undercloud (over SSH, or here for the local driver)."""
        target = self.ssh()
        if target is None:
            done = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
            return CommandResult(command, done.returncode, done.stdout, done.stderr)
        with Session(target) as session:
            return session.run(command, timeout)

    def check(self) -> list[Lack]:
        """What the undercloud lacks before it can be configured (empty: nothing)."""
        return []

    @property
    def home(self) -> str:
        """The login user's home on the undercloud, as a shell word (``~`` unless configured)."""
        return shlex.quote(self.options.undercloud.home) if self.options.undercloud.home else "~"

    def probe(self, templates_dir: str) -> Probe:
        """What deploy asks of the undercloud, in one round trip (one SSH session, one shell):
        does it run a command, has it TripleO's client, has it ``templates_dir``.

        Raises ``ApexError`` when it cannot be reached."""
        script = (f"echo {PROBE_MARK}; ({TRIPLEO_PROBE}) >/dev/null 2>&1; echo $?; "
                  f"test -d {shlex.quote(templates_dir)}; echo $?")
        done = self.run(script, timeout=120.0)
        words = done.stdout.split()
        if done.status != 0 or words[:1] != [PROBE_MARK] or len(words) != 3:
            said = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.status}"]
            return Probe(False, False, False, said[0])
        return Probe(True, words[1] == "0", words[2] == "0")

    def installed(self) -> bool:
        """True when the undercloud reports TripleO installed (``~/stackrc`` exists)."""
        return self.run(f"test -f {self.home}/{INSTALLED_MARKER}").ok

    def run_playbook(self, name: str, extra_vars: Mapping[str, Any], log_path: Path,
                     timeout: float | None = None) -> str:
        """Run the bundled playbook ``name`` on the undercloud (see ``playbook.run_playbook``)."""
        return run_playbook(playbook_path(name), self.ssh(), extra_vars, log_path, timeout=timeout)


# ``openstack overcloud deploy`` is there (the client and its TripleO plugin).
TRIPLEO_PROBE = "command -v openstack >/dev/null 2>&1 && openstack help overcloud deploy >/dev/null 2>&1"
PROBE_MARK = "apex-probe"


@dataclass(frozen=True)
class Probe:
    """``Undercloud.probe``'s answer; ``said``: why it does not answer (when it does not)."""

    answers: bool
    tripleo: bool
    templates: bool
    said: str = ""


def known_hosts_file(options: Options) -> tuple[Path, bool]:
    """Where the undercloud's host key is checked, and whether first contact records it there:
    ``undercloud.known_hosts`` as given (never written), else the work dir's (pinned)."""
    if options.undercloud.known_hosts:
        return Path(options.undercloud.known_hosts).expanduser(), False
    return Path(options.work_dir) / UNDERCLOUD_DIR / KNOWN_HOSTS, True


class SSHUndercloud(Undercloud):
    """An undercloud reached over SSH: checks SSH, sudo, ``openstack`` and the heat templates."""

    def ssh_target(self, host: str, key: Path) -> SSHTarget:
        """The SSH connection to ``host`` with the configured port and user, checking its host key."""
        path, pin = known_hosts_file(self.options)
        return SSHTarget(host, self.options.undercloud.port, self.options.undercloud.user, key, path, pin)

    def forget_host_key(self) -> Path | None:
        """Forget the host key recorded at first contact (a rebuilt undercloud has a new one);
        the file when one was forgotten. A configured ``undercloud.known_hosts`` is never touched."""
        path, pin = known_hosts_file(self.options)
        return path if pin and forget_host_key(path) else None

    def check(self) -> list[Lack]:
        uc = self.options.undercloud
        probes = {
            "sudo": ("sudo -n true", f"give {uc.user} passwordless sudo (`{uc.user} ALL=(ALL) NOPASSWD: ALL`)"),
            "openstack": ("command -v openstack", "install python-tripleoclient on the undercloud"),
            "heat templates": (f"test -d {shlex.quote(uc.templates_dir)}",
                               "install openstack-tripleo-heat-templates (or set undercloud.templates_dir)"),
        }
        # One round trip: every probe's exit status on a line of its own.
        script = "; ".join(f"{cmd} >/dev/null 2>&1; echo $?" for cmd, _ in probes.values())
        result = self.run(script)
        codes = result.stdout.split()
        if not result.ok or len(codes) != len(probes):
            raise UndercloudError(f"{self.describe()}: the checks did not run: {result.stderr.strip() or result.stdout}",
                                  "check the login user's shell on the undercloud")
        lacks = []
        for (what, (cmd, hint)), code in zip(probes.items(), codes):
            if code != "0":
                lacks.append(Lack(f"{what} (`{cmd}` exited {code})", hint))
        return lacks


def require_key(path: Path) -> Path:
    """The configured private key, which must exist (``undercloud.ssh_key``)."""
    if not path.is_file():
        raise UndercloudError(f"undercloud.ssh_key: {path} does not exist",
                              "set undercloud.ssh_key to the private key the undercloud accepts")
    return path
