"""What every target receives (``RunContext``) and returns (``TargetResult``)."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import ContextManager, Protocol

from apex_tools.core.config import Options, settings_path
from apex_tools.core.settings import (
    DeploySettings,
    NetworkSettings,
    PatchSet,
    load_deploy_settings,
    load_network_settings,
    load_patches_file,
    merged_patches,
)
from apex_tools.core.state import StateStore

REGISTRY_PORT = 8787


class Status(str, enum.Enum):
    """How a target (or one of its items) ended."""

    CHANGED = "changed"
    UP_TO_DATE = "up to date"
    PLANNED = "planned"
    # Everything up to the long step is done and checked; the step itself cannot run here
    # (deploy on an undercloud without TripleO). Not a failure: exit code 0.
    READY = "ready"
    SKIPPED = "skipped"
    FAILED = "failed"
    NOT_BUILT = "not built"


@dataclass
class Item:
    """One artifact or image of a target, with a free-form status ("downloaded", "mirrored", ...)."""

    name: str
    status: str
    detail: str = ""


@dataclass
class TargetResult:
    """A target's outcome: status, one-line changes (or planned actions), per-item rows."""

    target: str
    status: Status
    changes: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status is Status.FAILED or any(i.status == "failed" for i in self.items)


class Progress(Protocol):
    """A progress handle the library advances; the task side draws it (or logs it)."""

    def advance(self, amount: int = 1) -> None: ...

    def set_total(self, total: int | None) -> None: ...


class _NullProgress:
    def advance(self, amount: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass


ProgressFactory = Callable[[str, "int | None"], ContextManager[Progress]]


@contextlib.contextmanager
def null_progress(description: str, total: int | None = None) -> Iterator[Progress]:
    """A progress factory that shows nothing (library default, tests)."""
    yield _NullProgress()


@dataclass
class RunContext:
    """Options, state and switches shared by the targets of one run; settings load lazily."""

    options: Options
    force: bool = False
    dry_run: bool = False
    # undercloud: destroy and rebuild the undercloud VM whose definition changed (never implied by force).
    recreate: bool = False
    progress: ProgressFactory = null_progress

    @cached_property
    def state(self) -> StateStore:
        return StateStore(self.options.work_dir)

    @cached_property
    def deploy_settings(self) -> DeploySettings:
        return load_deploy_settings(settings_path(self.options.deploy_settings, "deploy"))

    @cached_property
    def network_settings(self) -> NetworkSettings:
        return load_network_settings(settings_path(self.options.network_settings, "network"))

    @cached_property
    def patches(self) -> PatchSet:
        """Deploy-settings patches merged with the common ones for this OpenStack version."""
        common = load_patches_file(settings_path(self.options.patches_file, ""))
        return merged_patches(self.deploy_settings, common)

    @property
    def os_version(self) -> str:
        return self.deploy_settings.os_version

    @property
    def registry_address(self) -> str:
        """The local registry: ``registry.address``, else the admin installer IP on port 8787."""
        if self.options.registry.address:
            return self.options.registry.address
        ip = self.network_settings.admin.installer_vm.ip
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{host}:{REGISTRY_PORT}"

    def expand(self, template: str) -> str:
        """Fill ``{os_version}`` in an upstream setting."""
        return template.replace("{os_version}", self.os_version)

    def up_to_date(self, target: str, fp: str) -> bool:
        """True when ``target`` may be skipped: same inputs as last time and not forced."""
        return not self.force and self.state.is_current(target, fp)
