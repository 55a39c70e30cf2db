"""What the undercloud says, through the local driver: the stack user's home, the stack's status
(a stand-in `openstack` on PATH speaks for Heat), TripleO or not."""

from __future__ import annotations

import getpass
import os
import pwd
import stat

import pytest

from apex_tools.core.config import Layer, resolve
from apex_tools.core.errors import UndercloudError
from apex_tools.overcloud.command import THT_ROOT
from apex_tools.overcloud.stack import stack_home, stack_status
from apex_tools.undercloud.local import LocalUndercloud


def _undercloud(tmp_path, user: str) -> LocalUndercloud:
    options = resolve([Layer("test", {"work_dir": str(tmp_path), "undercloud": {"driver": "local", "user": user}})])
    return LocalUndercloud(options.options, "127.0.0.1:8787")


def _openstack(tmp_path, monkeypatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "openstack"
    script.write_text("#!/bin/bash\n[ \"$1\" = help ] && exit 0\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_stack_home_is_the_setting_else_the_users_home_there(tmp_path) -> None:
    me = getpass.getuser()
    assert stack_home(_undercloud(tmp_path, me), "/srv/stack/") == "/srv/stack"
    assert stack_home(_undercloud(tmp_path, me), "") == pwd.getpwnam(me).pw_dir
    with pytest.raises(UndercloudError, match="the undercloud has no user 'no-such-stack-user'"):
        stack_home(_undercloud(tmp_path, "no-such-stack-user"), "")


@pytest.mark.parametrize("body, expected", [
    ('echo CREATE_COMPLETE\n', "CREATE_COMPLETE"),
    ('echo "Stack not found: overcloud" >&2; exit 1\n', None),
], ids=["complete", "absent"])
def test_stack_status(tmp_path, monkeypatch, body, expected) -> None:
    _openstack(tmp_path, monkeypatch, body)
    rc = tmp_path / "stackrc"
    rc.write_text("")
    undercloud = _undercloud(tmp_path, getpass.getuser())
    assert undercloud.probe(THT_ROOT).tripleo
    assert stack_status(undercloud, str(rc)) == expected


def test_an_unanswering_heat_is_an_error_not_no_stack(tmp_path, monkeypatch) -> None:
    _openstack(tmp_path, monkeypatch, 'echo "The request you have made requires authentication. (HTTP 401)" >&2; exit 1\n')
    rc = tmp_path / "stackrc"
    rc.write_text("")
    with pytest.raises(UndercloudError, match="cannot read the status of stack 'overcloud'.*HTTP 401"):
        stack_status(_undercloud(tmp_path, getpass.getuser()), str(rc))


def test_no_openstack_means_no_tripleo(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert not _undercloud(tmp_path, getpass.getuser()).probe(THT_ROOT).tripleo
