"""The targets of the flow, in DESIGN.md's order, each a function ``(RunContext) -> TargetResult``.

One module per target, named as the target. A target module imports library packages, never
another target: what one target hands the next goes through the work dir and the run records
(their names are in ``apex_tools.core.workdir``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from pathlib import Path

from apex_tools.core.config import Options
from apex_tools.core.errors import NotBuiltError
from apex_tools.core.run import RunContext, Status, TargetResult
from apex_tools.core.staging import sweep_stale, sweep_temp_files
from apex_tools.core.workdir import REGISTRY_DIR, STATE_DIR, UNDERCLOUD_DIR
from apex_tools.core.workdir import CEPH_LOOP, DEPLOY, FETCH_IMAGES, PATCH_CONTAINERS, PUSH_REGISTRY, UNDERCLOUD

TargetFn = Callable[[RunContext], TargetResult]

# DESIGN.md's flow; `deploy` runs these first, each once, then its own step.
FLOW = (FETCH_IMAGES, UNDERCLOUD, PATCH_CONTAINERS, CEPH_LOOP, PUSH_REGISTRY)
ALL = FLOW + (DEPLOY,)


def not_built(target: str, issue: str) -> TargetFn:
    """An honest placeholder: plans nothing, fails a real run with a clear message."""

    def placeholder(run: RunContext) -> TargetResult:
        if run.dry_run:
            return TargetResult(target, Status.NOT_BUILT, [f"not built yet ({issue}); a real run stops here"])
        raise NotBuiltError(
            f"{target}: this target is not built yet ({issue})",
            "run the targets before it on their own, or wait for its issue to land",
        )

    placeholder.__doc__ = f"{target}: not built yet ({issue})."
    return placeholder


def module_name(target: str) -> str:
    """The module of a target: ``push-registry`` → ``apex_tools.targets.push_registry``."""
    return f"{__name__}.{target.replace('-', '_')}"


def registry(names: Iterable[str] = ALL) -> dict[str, TargetFn]:
    """Target name → implementation (the module's function of the same name), for ``names``.

    Imported lazily, and only the targets asked for, so one target's imports never slow another.
    """
    table = {}
    for name in names:
        module = importlib.import_module(module_name(name))
        table[name] = getattr(module, name.replace("-", "_"))
    return table


def sweep_leftovers(options: Options) -> list[str]:
    """Remove the staging folders (and end the processes) a killed run of the targets left:
    ceph-loop's in the work dir, the undercloud volume's in the pool; and the unfinished atomic
    writes in the work dir. Call it under the run lock."""
    work = Path(options.work_dir)
    # The kinds are the targets' own (their modules' STAGING); named here so no target is imported.
    return (sweep_stale([work], ["ceph-loop"]) + sweep_stale([Path(options.undercloud.pool_path)], ["undercloud"])
            + sweep_temp_files([work, work / STATE_DIR, work / UNDERCLOUD_DIR, work / REGISTRY_DIR]))
