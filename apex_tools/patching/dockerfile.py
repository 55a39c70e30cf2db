"""Render the per-image Dockerfiles (``dockerfiles/*.j2``) deterministically."""

from __future__ import annotations

from dataclasses import dataclass


from apex_tools.core.templates import render

LABEL_PREFIX = "io.opnfv.apex"


@dataclass(frozen=True)
class ImagePatch:
    """A patch file in an image's build context and where in the image it applies."""

    file: str
    target_dir: str
    project: str
    change_id: str = ""
    revision: str = ""
    source: str = ""
    strip: int = 1

    @property
    def label(self) -> str:
        """``<project> <change-id>@<revision>`` (or the local file) for the image's labels."""
        return f"{self.project} {self.change_id}@{self.revision}" if self.change_id else f"{self.project} {self.source}"


def _render(template: str, **values: object) -> str:
    """Render ``dockerfiles/<template>`` with ``values`` (undefined names are errors)."""
    return render("dockerfiles", template, trim=True, **values)


def image_labels(source: str, patches: list[ImagePatch], odl_release: str = "") -> list[tuple[str, str]]:
    """The labels a rebuilt image gets (every builder): who patched it, its upstream ``source``, each patch.

    The base is named by its upstream reference, not the local registry's address, so the same
    base and patches give the same image whatever registry it is rebuilt in.
    """
    labels = [(f"{LABEL_PREFIX}.patched-by", "apex-tools patch-containers"), (f"{LABEL_PREFIX}.base", source)]
    labels += [(f"{LABEL_PREFIX}.patch.{n:02d}", p.label) for n, p in enumerate(patches, 1)]
    if odl_release:
        labels.append((f"{LABEL_PREFIX}.opendaylight", odl_release))
    return labels


def render_dockerfile(base: str, user: str, patches: list[ImagePatch], labels: list[tuple[str, str]],
                      odl_release: str = "") -> str:
    """The Dockerfile rebuilding ``base`` with ``patches`` (and another OpenDaylight release)."""
    template = "opendaylight.Dockerfile.j2" if odl_release else "Dockerfile.j2"
    return _render(template, base=base, user=user or "root", patches=patches, labels=labels)


def render_odl_repo(release: str, url: str) -> str:
    """The yum repository file of an OpenDaylight release."""
    return _render("opendaylight.repo.j2", release=release, url=url)
