"""The ``apex`` command: ``python -m apex_tools`` and the ``apex`` console script."""

import atexit
import gc
import os
import sys
import threading
import types
from typing import NoReturn


def _lighter_invoke() -> None:
    """Spare every run what Invoke loads at import and apex never uses (~30 ms of a 0.4 s re-run).

    Invoke reads YAML with its vendored pure-Python copy of PyYAML; apex reads every config file
    with its own reader (core/yamlfile), so Invoke gets PyYAML itself, as Invoke's unvendored
    distro packages do. Invoke's context module imports ``unittest.mock`` (and asyncio with it)
    for ``MockContext``, a testing aid apex never creates: it sees a stand-in while it loads, and
    the stand-in is dropped at once, so any later ``import unittest.mock`` gets the real module.
    """
    import yaml

    sys.modules.setdefault("invoke.vendor.yaml", yaml)
    if "unittest.mock" in sys.modules or "invoke" in sys.modules:
        return
    stand_in = types.ModuleType("unittest.mock", "stand-in while Invoke loads (apex_tools.__main__)")
    stand_in.Mock = type("Mock", (), {})  # type: ignore[attr-defined]
    sys.modules["unittest.mock"] = stand_in
    try:
        import invoke  # noqa: F401
    finally:
        if sys.modules.get("unittest.mock") is stand_in:
            del sys.modules["unittest.mock"]


def main() -> None:
    """Run the apex program (Invoke's, over the apex-tools collection)."""
    # Start-up builds ~50,000 long-lived objects (pydantic's validators, Invoke, the targets'
    # modules); at the default threshold (700) the cyclic collector walks them over and over
    # before any work starts: about 5% of a re-run. Collect the young generation far less
    # often; cycles are still collected, and reference counting frees everything else at once.
    gc.set_threshold(10_000, 10, 10)
    _lighter_invoke()
    from apex_tools.main import program

    try:
        program.run()
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: object) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, without the interpreter's teardown: freeing the
    ~100,000 objects of a process about to end one by one costs ~30 ms of every command. What must
    happen at exit still does (the atexit callbacks: logging's flush, paramiko's threads, weakref
    finalizers; the standard streams flushed); a run that left a non-daemon thread running, or an
    interpreter without ``atexit._run_exitfuncs``, exits the usual way."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if others or run_exitfuncs is None:
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (apex ... | head): nothing left to say
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    main()
