"""Task-side output: logging set-up, progress bars or log lines, the end-of-run summary.

This is the only module besides the tasks that writes to the terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from apex_tools.core.run import Item, Progress, TargetResult

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress

LOGGER = "apex_tools"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Exit codes: 1 a target failed (an expected failure), 2 bad settings or usage, 3 a bug.
EXIT_FAILED, EXIT_SETTINGS, EXIT_INTERNAL = 1, 2, 3


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for a bug report's single line."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


def internal_error(exc: BaseException, log_file: Path | None = None, verbose: bool = False) -> str:
    """Record an unexpected exception's traceback and return the one line that reports it.

    The traceback goes to ``log_file`` (the run's log) or, when there is none (a dry run, a
    failure before the run started) or it cannot be written, to a new file in the temp folder;
    with ``verbose`` it is also printed to stderr.
    """
    text = "".join(traceback.format_exception(exc))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    entry = f"{stamp} ERROR {LOGGER}: internal error: {one_line(exc)}\n{text}"
    where: Path | None = None
    if log_file is not None:
        try:
            with open(log_file, "a", encoding="utf-8") as log:
                log.write(entry)
            where = log_file
        except OSError:
            pass
    if where is None:
        with tempfile.NamedTemporaryFile("w", prefix="apex-internal-error-", suffix=".log",
                                         delete=False, encoding="utf-8") as crash:
            crash.write(entry)
        where = Path(crash.name)
    if verbose:
        sys.stderr.write(text)
    return f"apex: internal error (a bug in apex-tools, please report it): {one_line(exc)}; traceback in {where}"


class _QuietFileHandler(logging.FileHandler):
    """The log file: when it cannot be written (disk full), the run goes on and its own error
    says what failed; logging's multi-line "--- Logging error ---" report is not printed."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


class Output:
    """Where a task's words go: stderr for logs and progress, stdout for the summary."""

    def __init__(self, verbose: bool = False, quiet: bool = False, log_file: Path | None = None) -> None:
        self.quiet = quiet
        self.err = Console(stderr=True)
        self.out = Console()
        self.interactive = self.err.is_terminal and not quiet
        logger = logging.getLogger(LOGGER)
        logger.setLevel(logging.DEBUG)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        self.verbose = verbose
        self.log_file = log_file
        level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
        if self.interactive:
            from rich.logging import RichHandler  # a terminal's only (a pipe gets plain lines)

            screen: logging.Handler = RichHandler(console=self.err, show_path=False, markup=False)
            screen.setFormatter(logging.Formatter("%(message)s"))
        else:
            screen = logging.StreamHandler(sys.stderr)
            screen.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        screen.setLevel(level)
        logger.addHandler(screen)
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            to_file = _QuietFileHandler(log_file)
            to_file.setFormatter(logging.Formatter(LOG_FORMAT))
            to_file.setLevel(logging.DEBUG)
            logger.addHandler(to_file)
        self.log = logger

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Progress]:
        """A bar on a terminal; otherwise a log line at start, at most every 10 s, and at the end."""
        if self.interactive:
            # Here: only a terminal draws bars (and a run with nothing to move never asks for one).
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress as RichProgress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
            with RichProgress(*columns, console=self.err, transient=True) as bar:
                yield _RichHandle(bar, bar.add_task(description, total=total))
        else:
            handle = _LogHandle(self.log, description, total)
            yield handle
            handle.finish()

    def summary(self, results: Sequence[TargetResult], as_json: bool = False) -> None:
        """The end-of-run table: target, status, time, what changed (one short line each).

        Without ``verbose`` each line is cut to two lines of its column, and the items are
        counted by status ("41 mirrored, 3 already there, 1 failed: nova-api"); with it, lines
        are whole and every item has its row. The log file gets everything, whole.
        """
        self._log_to_file(results)
        if as_json:
            self.out.print_json(json.dumps([_as_dict(r) for r in results]))
            return
        targets = [r.target for r in results] + ([f"  {i.name}" for r in results for i in r.items] if self.verbose else [])
        times = [f"{r.seconds:.1f}s" for r in results]
        # The reason column gets what the others leave (8: the edges, the gaps and the padding).
        widths = [max(map(len, ["target", *targets])), max(len(r.status.value) for r in results), max(map(len, times))]
        room = max(24, self.out.width - 8 - sum(widths))
        table = Table(title="apex-tools run", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True)
        table.add_column("target", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("what changed", overflow="fold", width=None if self.verbose else room)
        for result, took in zip(results, times):
            style = ("red" if result.failed else "green" if result.status.value == "changed"
                     else "yellow" if result.status.value == "ready" else None)
            lines = list(result.changes)
            # Counting items is news only when they did something else than the target did.
            # Failed items are always named (all of them failing is news too).
            if not self.verbose and any(i.status != result.status.value or i.status == "failed"
                                        for i in result.items):
                lines.append(count_items(result.items))
            # Text cells, not markup: details such as "[/dev/sdb]" must print as they are.
            reason = Text("\n".join(lines) or "-") if self.verbose else self._two_lines(lines, room)
            table.add_row(Text(result.target), Text(result.status.value), Text(took), reason, style=style)
            if self.verbose:
                for item in result.items:
                    table.add_row(*map(Text, (f"  {item.name}", item.status, "", item.detail or "")))
        self.out.print(table)

    def _two_lines(self, lines: Sequence[str], width: int) -> Text:
        """Each line's first line, wrapped to ``width`` and cut after two lines with "…"."""
        cell = Text()
        for line in lines or ["-"]:
            text = line.strip()
            first = text.split("\n", 1)[0]
            wrapped = Text(first).wrap(self.out, width, overflow="fold")
            shown = [w.plain.rstrip() for w in wrapped][:2] or [""]
            if len(wrapped) > 2 or first != text:
                shown[-1] = shown[-1][: width - 1].rstrip() + "…"
            if cell:
                cell.append("\n")
            cell.append("\n".join(shown))
        return cell

    def _log_to_file(self, results: Sequence[TargetResult]) -> None:
        """Every line and item of the summary, whole, in the log file only (not on the screen)."""
        handlers = [h for h in self.log.handlers if isinstance(h, logging.FileHandler)]
        for result in results:
            lines = [f"{result.target}: {result.status.value}: {c}" for c in result.changes]
            lines += [f"{result.target}: {i.name}: {i.status} {i.detail}".rstrip() for i in result.items]
            for line in lines:
                record = self.log.makeRecord(self.log.name, logging.DEBUG, __file__, 0, "%s", (line,), None)
                for handler in handlers:
                    handler.handle(record)


def count_items(items: Sequence[Item], named: int = 3) -> str:
    """Items counted by status, most first; failed ones named: "41 mirrored, 1 failed: nova-api"."""
    by_status: dict[str, list[str]] = {}
    for item in items:
        by_status.setdefault(item.status, []).append(item.name)
    parts = []
    for status, names in sorted(by_status.items(), key=lambda kv: (kv[0] == "failed", -len(kv[1]), kv[0])):
        part = f"{len(names)} {status}"
        if status == "failed":
            shown = [n.rsplit("/", 1)[-1] for n in names[:named]]
            part += ": " + ", ".join(shown) + (f" and {len(names) - named} more" if len(names) > named else "")
        parts.append(part)
    return ", ".join(parts)


def _as_dict(result: TargetResult) -> dict[str, object]:
    return {
        "target": result.target,
        "status": result.status.value,
        "seconds": round(result.seconds, 3),
        "changes": result.changes,
        "items": [vars(i) for i in result.items],
    }


class _RichHandle:
    def __init__(self, bar: RichProgress, task_id: int) -> None:
        self.bar, self.task_id = bar, task_id

    def advance(self, amount: int = 1) -> None:
        self.bar.advance(self.task_id, amount)

    def set_total(self, total: int | None) -> None:
        self.bar.update(self.task_id, total=total)


class _LogHandle:
    INTERVAL = 10.0

    def __init__(self, log: logging.Logger, description: str, total: int | None) -> None:
        self.log, self.description, self.total = log, description, total
        self.done, self.started = 0, time.monotonic()
        self.last = self.started
        log.info("%s: started", description)

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        now = time.monotonic()
        if now - self.last >= self.INTERVAL:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            self.log.info("%s: %d%s", self.description, self.done, of)

    def set_total(self, total: int | None) -> None:
        self.total = total

    def finish(self) -> None:
        self.log.info("%s: done (%d) in %.1fs", self.description, self.done, time.monotonic() - self.started)
