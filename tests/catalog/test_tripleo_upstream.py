"""Against TripleO's real sdists from PyPI (downloaded once into the sdist cache, reused by
later sessions): the parameter names we write exist in each release's tripleo-heat-templates,
and regenerating build/tripleo/ reproduces the committed files byte for byte.

Without PyPI and without a filled cache these skip locally (``need``) and fail in CI.
Cache: ``$APEX_TRIPLEO_CACHE`` or ``~/.cache/apex-tools/tripleo`` (``generate.default_cache``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apex_tools.catalog import generate
from apex_tools.catalog.images import load_catalog
from apex_tools.catalog.tht import heat_templates, heat_templates_from_dir
from apex_tools.core.errors import ApexError
from apex_tools.core.settings import OS_VERSIONS

from conftest import REPO, need

BUILD = REPO / "build" / "tripleo"


@pytest.fixture(scope="session")
def sdists() -> dict[str, tuple[Path, Path]]:
    """Release → (tripleo-common, THT) sdists of the versions build/tripleo names."""
    cache = Path(os.environ.get("APEX_TRIPLEO_CACHE") or generate.default_cache())
    found: dict[str, tuple[Path, Path]] = {}
    try:
        for release in OS_VERSIONS:
            found[release] = generate.release_sdists(cache, release, pins=BUILD)
    except ApexError as exc:
        need(False, f"TripleO sdists from PyPI ({exc.message})")
    return found


@pytest.mark.parametrize("release", OS_VERSIONS)
def test_every_parameter_we_can_write_exists_in_that_releases_tht(sdists, release):
    tree = generate.unpack(sdists[release][1])
    heat = heat_templates_from_dir(tree, release)
    cat = load_catalog(release)
    # Every image parameter of the release, and the registry address docker-images.yaml adds.
    ours = {p for image in cat.images.values() for p in image.parameters} | set(cat.ceph.parameters) | {
        "DockerInsecureRegistryAddress"}
    assert len(ours) > 50
    assert sorted(p for p in ours if not heat.has_parameter(p)) == []
    # The installed-tree reader and the bundled data agree.
    assert heat == heat_templates(release)
    assert heat.roles == heat_templates(release).roles


def test_regenerating_reproduces_the_committed_files(sdists, tmp_path):
    cache = sdists["queens"][0].parent
    written = generate.generate(tmp_path, cache, pins=BUILD, fetch=False)
    assert len(written) == 2 * len(OS_VERSIONS)
    for item in written:
        committed = BUILD / item.release / item.path.name
        assert item.path.read_bytes() == committed.read_bytes(), f"{committed} differs: run scripts/update-catalog"
