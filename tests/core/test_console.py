"""The end-of-run summary at 80 columns: one short line per change, items counted by status,
everything whole in the log file and with ``--verbose``."""

from __future__ import annotations

import logging

import pytest

from apex_tools.core.console import Output, count_items
from apex_tools.core.run import Item, Status, TargetResult

GERRIT = ("patch-containers: change I2e0a40d7902f592e4b7bd727f57048111e0bea36 (project openstack/tripleo-common, "
          "branch master): cannot reach Gerrit at https://review.opendev.org: ConnectionError: HTTPSConnectionPool("
          "host='review.opendev.org', port=443): Max retries exceeded with url: /changes/openstack%2Ftripleo-common"
          "~master~I2e0a40d7902f592e4b7bd727f57048111e0bea36?o=CURRENT_REVISION")
MIRROR = ([Item(f"tripleomaster/centos-binary-svc{n}", "mirrored", "12 MB sent") for n in range(41)]
          + [Item(f"tripleomaster/centos-binary-old{n}", "already there") for n in range(3)]
          + [Item("tripleomaster/centos-binary-nova-api", "failed", "HTTP 500 on blob upload\nsecond line")])


def results() -> list[TargetResult]:
    return [
        TargetResult("patch-containers", Status.PLANNED, [GERRIT, "write docker_patches.tar.gz"]),
        TargetResult("push-registry", Status.FAILED, ["mirrored 41 images (500 bytes sent)"], MIRROR, 12.5),
    ]


@pytest.fixture
def at_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    yield
    for handler in list(logging.getLogger("apex_tools").handlers):
        logging.getLogger("apex_tools").removeHandler(handler)
        handler.close()


def rows(out: str) -> list[str]:
    """The table's lines after the header rule."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    return [line for line in lines[start + 1:] if line.strip()]


def reason_column(out: str) -> int:
    return next(line.index("what changed") for line in out.splitlines() if "what changed" in line)


def test_items_are_counted_by_status_and_the_failed_named():
    assert count_items(MIRROR) == "41 mirrored, 3 already there, 1 failed: centos-binary-nova-api"
    many = [Item(f"r/i{n}", "failed") for n in range(5)]
    assert count_items(many) == "5 failed: i0, i1, i2 and 2 more"


def test_at_80_columns_each_change_takes_at_most_two_lines_and_items_one(at_80_columns, capsys, tmp_path):
    Output(quiet=True, log_file=tmp_path / "apex.log").summary(results())
    out = capsys.readouterr().out
    table, column = rows(out), reason_column(out)
    assert all(len(line) <= 80 for line in table)
    starts = [i for i, line in enumerate(table) if line[:18].strip()]
    assert [table[i].split()[0] for i in starts] == ["patch-containers", "push-registry"]
    gerrit, push = table[starts[0]:starts[1]], table[starts[1]:]
    assert len(gerrit) <= 2 + 1, gerrit  # the long change in two lines, the archive in one
    assert gerrit[0].rstrip().endswith(gerrit[0].split()[-1]) and any("…" in line for line in gerrit)
    text = " ".join(line[column:].strip() for line in push)
    assert "41 mirrored, 3 already there, 1 failed: centos-binary-nova-api" in " ".join(text.split())
    assert "svc7" not in text, "no row per image without --verbose"
    log = (tmp_path / "apex.log").read_text()
    assert GERRIT in log, "the log keeps the whole line"
    assert "push-registry: tripleomaster/centos-binary-nova-api: failed HTTP 500 on blob upload" in log
    assert "tripleomaster/centos-binary-svc40: mirrored 12 MB sent" in log


def test_verbose_shows_every_line_whole_and_a_row_per_item(at_80_columns, capsys):
    Output(quiet=True, verbose=True).summary(results())
    out = capsys.readouterr().out
    flat = "".join(line.strip() for line in rows(out))
    assert "CURRENT_REVISION" in flat
    assert "centos-binary-svc40" in out and "centos-binary-old2" in out
