"""The targets of the flow, in DESIGN.md's order, each a library function ``(RunContext) -> TargetResult``."""

from __future__ import annotations

from collections.abc import Callable

from .errors import NotBuiltError
from .run import RunContext, Status, TargetResult

TargetFn = Callable[[RunContext], TargetResult]

# DESIGN.md's flow; `deploy` runs these first, each once, then its own step.
FLOW = ("fetch-images", "undercloud", "patch-containers", "ceph-loop", "push-registry")
ALL = FLOW + ("deploy",)


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


def registry() -> dict[str, TargetFn]:
    """Target name → implementation. Imported lazily so one target's imports never slow another."""
    from .ceph import ceph_loop
    from .containers import patch_containers
    from .images import fetch_images
    from .push_registry import push_registry

    return {
        "fetch-images": fetch_images,
        "undercloud": not_built("undercloud", "no issue yet"),
        "patch-containers": patch_containers,
        "ceph-loop": ceph_loop,
        "push-registry": push_registry,
        "deploy": not_built("deploy", "no issue yet"),
    }
