"""undercloud: not built yet (its issue lands here)."""

from __future__ import annotations

from apex_tools.targets import not_built

undercloud = not_built("undercloud", "its issue has not landed")
