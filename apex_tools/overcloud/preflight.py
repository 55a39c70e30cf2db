"""The checks before the long step: what Apex found out two hours into a deploy, found in seconds.

Each check returns problems, each naming the thing, what is wrong and what to fix; the
pre-flight runs them all and fails once, listing every problem.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from apex_tools.catalog.tht import HeatTemplates
from apex_tools.core.errors import ApexError, RegistryError
from apex_tools.core.reference import ImageRef
from apex_tools.core.resources import load_yaml
from apex_tools.overcloud.inventory import Inventory, Scale
from apex_tools.registry.client import RegistryClient, RegistryHTTPError
from apex_tools.undercloud.base import Probe, Undercloud

log = logging.getLogger(__name__)


# Services a release's python-tripleoclient asks to confirm when an environment enables them
# (its constants.DEPRECATED_SERVICES: 11.5.2 stein, 12.6.0 train (Docker on python 3), 13.x
# ussuri, 14.x victoria; none since wallaby). The deploy runs the client without a terminal.
CLIENT_DEPRECATED: dict[str, tuple[str, ...]] = {
    "stein": ("OS::TripleO::Services::OpenDaylightApi",),
    "train": tuple(f"OS::TripleO::Services::{name}" for name in (
        "OpenDaylightApi", "NovaPlacement", "RabbitMQ", "Congress", "GlanceRegistry", "NovaConsoleauth", "Docker")),
    "ussuri": ("OS::TripleO::Services::OpenDaylightApi",),
    "victoria": ("OS::TripleO::Services::OpenDaylightApi",),
}


class PreflightError(ApexError):
    """A pre-flight check failed: the deploy would have failed later."""


@dataclass(frozen=True)
class Problem:
    check: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message} — {self.fix}"


def check_environment_files(files: Mapping[str, Path], tht_paths: Iterable[str], tht: HeatTemplates) -> list[Problem]:
    """Every local environment file reads and parses as a YAML mapping; every THT one exists in the release."""
    problems = []
    for name, path in files.items():
        try:
            data = load_yaml(path.read_text())
        except OSError as exc:
            problems.append(Problem("environment files", f"{path}: cannot read: {exc.strerror or exc}",
                                    f"make {name} readable (or re-run the target that writes it)"))
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problems.append(Problem("environment files", f"{path}:{where}: not valid YAML: "
                                    f"{getattr(exc, 'problem', exc)}", f"fix {name} or re-run the target that writes it"))
            continue
        if not isinstance(data, (dict, list)):
            problems.append(Problem("environment files", f"{path}: holds {type(data).__name__}, not a mapping",
                                    f"re-run the target that writes {name}"))
    for rel in tht_paths:
        if not tht.has_environment(rel):
            problems.append(Problem("environment files", f"tripleo-heat-templates {tht.release} has no {rel}",
                                    "change the deploy settings' features, or use a release that has it"))
            continue
        # What Heat would stop at ("Could not fetch contents"), after the stack was created.
        for kind, template in tht.missing_templates(rel):
            problems.append(Problem("environment files", f"{rel}: resource_registry {kind} maps {template}, which "
                                    f"tripleo-heat-templates {tht.release} ({tht.source or 'as given'}) does not "
                                    "ship: the stock release cannot deploy this scenario",
                                    "pick another scenario or os_version, or patch the templates (image_patches)"))
        registry = tht.environment_templates.get(rel, {})
        for service in CLIENT_DEPRECATED.get(tht.release, ()):
            if service in registry:
                problems.append(Problem("environment files", f"{rel} enables {service}, which {tht.release}'s "
                                        "python-tripleoclient deprecates: the deploy would stop at its "
                                        "confirmation prompt (\"Action not confirmed\") without a terminal",
                                        "pick another scenario or os_version"))
    return problems


def image_parameters(docker_images: Path) -> dict[str, str]:
    """The image parameters of ``docker-images.yaml`` (name → image), what the deploy hands Heat."""
    data = load_yaml(docker_images.read_text()) or {}
    defaults = data.get("parameter_defaults", {}) if isinstance(data, dict) else {}
    return {k: v for k, v in sorted(defaults.items()) if isinstance(v, str) and k.endswith("Image")}


def check_parameters(params: Mapping[str, str], tht: HeatTemplates, source: str) -> list[Problem]:
    """Every image parameter exists in the release's templates (Heat ignores an unknown one silently)."""
    return [
        Problem("parameters", f"{source}: {name}: tripleo-heat-templates {tht.release} has no such parameter "
                "(Heat would ignore it and deploy the default upstream image)",
                "fix the parameter's name in the catalog (build/) and re-run push-registry")
        for name in params if not tht.has_parameter(name)
    ]


def check_images(refs: Iterable[ImageRef], client_for: Callable[[ImageRef], tuple[RegistryClient, str]],
                 jobs: int = 4) -> list[Problem]:
    """Every image is pullable as the undercloud reaches its registry: manifest (and children) and blobs."""
    unique = sorted(set(refs), key=str)
    # One ping per registry first: a silent one is one problem, not every image waiting through retries.
    silent: dict[str, str] = {}
    pinged: set[str] = set()
    for ref in unique:
        client, seen_as = client_for(ref)
        if client.host not in pinged:
            pinged.add(client.host)
            if not client.ping():
                silent[client.host] = seen_as
    problems = [Problem("images", f"registry {seen} does not answer at /v2/ (as the undercloud reaches it)",
                        "start the local registry (push-registry does) or fix registry.address")
                for seen in sorted(silent.values())]
    unique = [ref for ref in unique if client_for(ref)[0].host not in silent]

    def one(ref: ImageRef) -> list[Problem]:
        client, seen_as = client_for(ref)
        try:
            return _check_image(client, ref, seen_as)
        except RegistryError as exc:
            return [Problem("images", f"{ref}: registry {seen_as} failed: {exc.message}",
                            "check that the registry runs and is reachable from the undercloud")]

    with ThreadPoolExecutor(max_workers=max(1, min(jobs * 2, len(unique) or 1))) as pool:
        return problems + [p for found in pool.map(one, unique) for p in found]


def _check_image(client: RegistryClient, ref: ImageRef, seen_as: str) -> list[Problem]:
    fix = "re-run push-registry with --force"
    try:
        manifest = client.get_manifest(ref.repository, ref.reference)
    except RegistryHTTPError as exc:
        if exc.status == 404:
            return [Problem("images", f"{ref}: no such manifest in the registry (as the undercloud reaches it: "
                            f"{seen_as})", fix)]
        raise
    manifests = [manifest]
    problems = []
    for child in manifest.children():
        try:
            manifests.append(client.get_manifest(ref.repository, child["digest"]))
        except RegistryHTTPError as exc:
            if exc.status != 404:
                raise
            problems.append(Problem("images", f"{ref}: child manifest {child['digest']} is missing", fix))
    for each in manifests:
        for blob in each.blobs():
            if client.has_blob(ref.repository, blob["digest"]) is None:
                problems.append(Problem("images", f"{ref}: blob {blob['digest']} is missing from {seen_as}", fix))
    return problems


def check_undercloud(undercloud: Undercloud, templates_dir: str) -> tuple[list[Problem], Probe]:
    """The undercloud runs a command; and what else it said in the same round trip (its
    TripleO client, ``templates_dir``)."""
    try:
        probe = undercloud.probe(templates_dir)
    except ApexError as exc:
        return [Problem("undercloud", f"the undercloud ({undercloud.name}) does not answer: {exc.message}",
                        "start it, or fix undercloud.host / undercloud.port / undercloud.ssh_key")], \
            Probe(False, False, False, exc.message)
    if not probe.answers:
        return [Problem("undercloud", f"the undercloud ({undercloud.name}) does not answer: {probe.said}",
                        "start it, or fix undercloud.host / undercloud.port / undercloud.user / undercloud.ssh_key")], \
            probe
    return [], probe


def check_scale(inventory: Inventory, scale: Scale) -> list[Problem]:
    """The inventory holds at least as many nodes of each profile as the scale asks for."""
    problems = []
    for profile, wanted in (("control", scale.control), ("compute", scale.compute)):
        have = inventory.count(profile)
        if have < wanted:
            problems.append(Problem("scale", f"{inventory.path}: {wanted} {profile} nodes wanted, "
                            f"{have} with profile:{profile}", f"add {profile} nodes to the inventory"))
    return problems


def check_files(paths: Iterable[Path], what: str, fix: str) -> list[Problem]:
    """Files the deploy copies to the undercloud exist."""
    return [Problem("inputs", f"{what} {p} is missing", fix) for p in paths if not p.is_file()]


def raise_problems(problems: list[Problem]) -> None:
    """Fail once, listing every problem (the first line is what the summary shows)."""
    if problems:
        raise PreflightError(
            f"pre-flight: {len(problems)} problem{'s' if len(problems) > 1 else ''} "
            f"({', '.join(sorted({p.check for p in problems}))}); the deploy was not started:\n  "
            + "\n  ".join(map(str, problems)),
            "fix what each line names, then run deploy again",
        )
