"""deploy: not built yet (its issue lands here)."""

from __future__ import annotations

from apex_tools.targets import not_built

deploy = not_built("deploy", "its issue has not landed")
