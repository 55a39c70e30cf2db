"""An unexpected exception is a bug report: one line naming it and the file holding its
traceback, exit code 3 (1 is a failed target, 2 bad settings), the traceback on the terminal
only with ``--verbose``. The ``apex`` command runs in a child process with one function
replaced by one that raises, as a bug would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from apex_tools.core.console import EXIT_INTERNAL

from conftest import REPO

BUGGY_TARGET = """
import sys
import apex_tools.targets.fetch_images as target

def fetch_images(run):
    return {}["overcloud-full.tar"]  # a bug: KeyError

target.fetch_images = fetch_images
from apex_tools.main import program
program.run(["apex", *sys.argv[1:]])
"""
# A bug before any target runs: reading the configuration.
BUGGY_EDGE = """
import sys
import apex_tools.tasks as tasks

def options_from(*args, **kwargs):
    raise RuntimeError("config layering broke")

tasks.options_from = options_from
from apex_tools.main import program
program.run(["apex", *sys.argv[1:]])
"""
LINE = re.compile(r"^apex: internal error \(a bug in apex-tools, please report it\): (?P<exc>.+); "
                  r"traceback in (?P<log>\S+)$")


def apex(code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"),
           "APEX_WORK_DIR": str(tmp_path / "work"), "APEX_IMAGE_DIR": str(tmp_path / "images"),
           "APEX_NO_FETCH": "1"}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    # A file, not -c, so the traceback shows the source lines.
    script = tmp_path / "buggy_apex.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def report(done: subprocess.CompletedProcess[str]) -> re.Match[str]:
    """The bug report: exit code 3 and, as stderr's last line, the one line."""
    assert done.returncode == EXIT_INTERNAL, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    found = LINE.match(last)
    assert found, last
    return found


def test_bug_in_a_target_is_one_line_exit_3_and_the_traceback_in_the_run_log(tmp_path):
    done = apex(BUGGY_TARGET, tmp_path, "fetch-images", "--json")
    found = report(done)
    assert found["exc"] == "KeyError: 'overcloud-full.tar'"
    assert Path(found["log"]) == tmp_path / "work" / "apex.log"
    assert "Traceback" not in done.stderr, "the terminal gets one line, not the traceback"
    log = (tmp_path / "work" / "apex.log").read_text()
    assert "internal error: KeyError: 'overcloud-full.tar'" in log
    assert "Traceback (most recent call last):" in log and 'return {}["overcloud-full.tar"]' in log
    (row,) = json.loads(done.stdout)
    assert (row["target"], row["status"], row["changes"]) == (
        "fetch-images", "failed", ["internal error: KeyError: 'overcloud-full.tar'"])


def test_verbose_prints_the_traceback_too(tmp_path):
    done = apex(BUGGY_TARGET, tmp_path, "fetch-images", "--verbose")
    report(done)
    assert "Traceback (most recent call last):" in done.stderr
    assert 'return {}["overcloud-full.tar"]' in done.stderr


def test_a_dry_runs_bug_goes_to_a_file_of_its_own(tmp_path):
    # A dry run writes no log: the traceback gets a file in the temp folder.
    done = apex(BUGGY_TARGET, tmp_path, "deploy", "--dry-run")
    found = report(done)
    crash = Path(found["log"])
    assert crash.parent == tmp_path / "tmp" and crash.name.startswith("apex-internal-error-")
    assert 'return {}["overcloud-full.tar"]' in crash.read_text()
    assert not (tmp_path / "work").exists(), "a dry run touches nothing, even when it fails"


def test_bug_before_any_target_is_reported_by_the_program_edge(tmp_path):
    done = apex(BUGGY_EDGE, tmp_path, "push-registry")
    found = report(done)
    assert found["exc"] == "RuntimeError: config layering broke"
    assert "Traceback" not in done.stderr
    assert "in options_from" in Path(found["log"]).read_text()


@pytest.mark.parametrize("args, code", [(["fetch-images", "--no-such-flag"], 1), (["config", "--key", "nope"], 2)],
                         ids=["usage-error", "bad-key"])
def test_expected_failures_keep_their_exit_codes(tmp_path, args, code):
    done = subprocess.run([sys.executable, "-m", "apex_tools", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == code, done.stderr
    assert "internal error" not in done.stderr
