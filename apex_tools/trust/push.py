"""The trust step as push-registry calls it: from what the run pushed to signatures, statements,
the policy files and provenance.json (a few lines in the target, the rest here)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from apex_tools.core.config import Options
from apex_tools.core.errors import ApexError
from apex_tools.core.reference import ImageRef
from apex_tools.core.run import RunContext
from apex_tools.core.workdir import PATCH_CONTAINERS
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.deployment import DeploymentImage
from apex_tools.registry.mirror import FAILED, CopyResult
from apex_tools.trust.keys import SigningKey, ensure_key, key_id_of
from apex_tools.trust.policy import write_policy
from apex_tools.trust.sigstore import Signed, attachment_tag, sign_image

if TYPE_CHECKING:
    from apex_tools.trust.images import TrustOutcome

log = logging.getLogger(__name__)

OFF = "off"


def signing_state(options: Options, remember: bool = False) -> str | None:
    """What push-registry's fingerprint holds of signing: "off", the key's id, or None (to generate).

    ``remember``: a real run's check may note the key's id (``keys.key_id_of``).
    """
    if not options.signing.enabled:
        return OFF
    return key_id_of(options.work_dir, options.signing.key, remember)


def trust_plan(signing: str | None) -> str:
    """push-registry's plan line for the trust step, from ``signing_state``."""
    if signing == OFF:
        return "write provenance.json (signing is off)"
    key = "a key generated now" if signing is None else f"key {signing[:19]}"
    return f"sign the images docker-images.yaml names ({key}), attach the rebuilds' SLSA statements, " \
           "write policy.json, registries.d/ and provenance.json"


class EarlySigner:
    """Signs each mirrored image as soon as its copy ends, so the signing overlaps the copies still
    running; the trust step signs the rest (the rebuilt images, anything that failed here) and
    counts all of them.

    With the registry's storage at hand (signing makes no request) and no other thread running,
    the signing runs in a child forked now (``os.fork``: it has every module and the client
    already), fed one line per image through a pipe and answering through another: in this
    process it would share the interpreter's lock with the copies, where the child has the
    machine's other core. Otherwise it runs on the mirror's worker thread. Use as a context
    manager: the child ends with it (it is killed, by its pid, if the run failed).

    ``skip``: the targets (``str(ImageRef)``) not to sign here (the bases of rebuilt images: the
    deployment runs their ``:apex`` images, signed once pushed). ``key_ready``: the key exists
    (else it is generated here, once, before any signing).
    """

    def __init__(self, run: RunContext, local: RegistryClient, named: str, skip: set[str], key_ready: bool) -> None:
        self.options = run.options
        self._key: tuple[SigningKey, bool] | None = None
        self.local = local
        self.named = named
        self.skip = skip
        self._signed: dict[str, Signed] = {}  # the name signed (as the nodes pull it) → its signing
        self._asked: set[str] = set()
        self._lock = threading.Lock()
        self._child: int | None = None
        self._tasks = self._answers = -1
        if not key_ready:
            self._ensure_key()
        if local.storage is not None and threading.active_count() == 1:
            self._fork()
        # The key (and its library) loads while the copies run: the trust step needs it here too.
        threading.Thread(target=self._preload, name="signing-key", daemon=True).start()

    def _preload(self) -> None:
        with contextlib.suppress(Exception):  # the trust step loads it again and reports what is wrong
            self._ensure_key()

    def _fork(self) -> None:
        tasks_read, self._tasks = os.pipe()
        self._answers, answers_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the run
            code = 1
            try:
                os.close(self._tasks)
                os.close(self._answers)
                self._serve(tasks_read, answers_write)
                code = 0
            finally:
                os._exit(code)
        os.close(tasks_read)
        os.close(answers_write)
        self._child = pid

    def _serve(self, tasks: int, answers: int) -> None:
        """The child's loop: ``<ref> <digest>`` lines in, one JSON line per signing out, until EOF."""
        with os.fdopen(tasks, "r") as lines, os.fdopen(answers, "w") as out:
            for line in lines:
                ref, digest = line.split()
                signed = self.sign(ref, digest)
                out.write(json.dumps(dataclasses.asdict(signed) if signed else {"identity": ref}) + "\n")

    def __enter__(self) -> EarlySigner:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self._child is None:
            return
        if kind is None or issubclass(kind, Exception):
            # A run ending early: the child finishes what it was given (no file left half-written).
            _ = self.signed
            return
        # Interrupted: the child goes at once (by its pid).
        for fd in (self._tasks, self._answers):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._child, signal.SIGKILL)
        os.waitpid(self._child, 0)
        self._child = None

    def _ensure_key(self) -> tuple[SigningKey, bool]:
        with self._lock:
            if self._key is None:
                self._key = ensure_key(self.options.work_dir, self.options.signing.key)
            return self._key

    @property
    def key(self) -> SigningKey:
        return self._ensure_key()[0]

    @property
    def generated(self) -> bool:
        """The key was generated by this run."""
        return self._ensure_key()[1]

    def __call__(self, result: CopyResult) -> None:
        """Sign ``result``'s image when its copy succeeded (the mirror's ``on_image``)."""
        target = result.job.target
        if result.status == FAILED or not result.digest or str(target) in self.skip:
            return
        ref = str(target.with_registry(self.named))
        with self._lock:
            if ref in self._asked:
                return
            self._asked.add(ref)
            if self._child is not None:
                os.write(self._tasks, f"{ref} {result.digest}\n".encode())  # one line: one atomic write
                return
        signed = self.sign(ref, result.digest)
        if signed is not None:
            with self._lock:
                self._signed[ref] = signed

    def sign(self, ref: str, digest: str) -> Signed | None:
        """Sign one image; None when it failed (the trust step tries again and reports it)."""
        try:
            return sign_image(self.local, ImageRef.parse(ref), digest, self.key)
        except ApexError as exc:
            log.debug("signing %s early failed (the trust step tries again): %s", ref, exc)
            return None

    @property
    def signed(self) -> dict[str, Signed]:
        """Every signing done, by name (waits for the child's answers, then for its end)."""
        if self._child is not None:
            os.close(self._tasks)
            with os.fdopen(self._answers, "r") as answers:
                for line in answers:
                    data = json.loads(line)
                    if "status" in data:
                        self._signed[data["identity"]] = Signed(**data)
            _, status = os.waitpid(self._child, 0)
            self._child = None
            if status != 0:
                log.debug("the signing process ended with status %d (the trust step signs the rest)", status)
        return self._signed


def trust_step(
    run: RunContext,
    local: RegistryClient,
    named: str,
    images: Sequence[tuple[DeploymentImage, str | None]],
    results: Sequence[CopyResult],
    rebuilds: Mapping[str, Mapping[str, Any]],
    early: EarlySigner | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Sign every image of the parameter file, attach the rebuilds' statements, write the policy
    files and provenance.json; the one-line changes.

    ``images``: each deployment image with its upstream digest; ``results``: the copies (their
    digests are the bytes PUT, or the digest found equal on both sides); ``rebuilds``:
    push-registry's record of each rebuilt image (its ``:apex`` digest from the push, base and
    its digest, builder, patches). ``local`` reaches the registry the files call ``named``.
    ``early``: what the mirror already signed, with the key it used.
    """
    options = run.options
    work = options.work_dir
    key, generated = None, False
    if options.signing.enabled:
        key, generated = (early.key, early.generated) if early else ensure_key(work, options.signing.key)
    with ThreadPoolExecutor(max_workers=1) as side:
        # The policy files (each written and synced) while the images are signed.
        policy = side.submit(write_policy, work, named) if options.signing.enabled else None
        outcome = _trust_images(run, local, named, images, results, rebuilds, key, early)
        written = policy.result() if policy is not None else []
    changes: list[str] = []
    if generated:
        changes.append("generated the signing key (signing/signing.key, mode 0600; signing.pub beside it)")
    if written:
        changes.append(f"wrote {', '.join(written)} (signatures required on {named})")
    return changes + outcome.changes, outcome.signatures


def _trust_images(run: RunContext, local: RegistryClient, named: str,
                  images: Sequence[tuple[DeploymentImage, str | None]], results: Sequence[CopyResult],
                  rebuilds: Mapping[str, Mapping[str, Any]], key: SigningKey | None,
                  early: EarlySigner | None) -> TrustOutcome:
    """``trust_step``'s signing (with ``key``; None: off), statements and provenance."""
    # Here, not at the top: a run with nothing to do never signs (nor pays for the import).
    from apex_tools.trust.images import ImageFacts, trust_images

    options = run.options
    work = options.work_dir
    copied = {str(r.job.target): r.digest for r in results}
    record = run.state.load(PATCH_CONTAINERS)
    planned = (record.data.get("rebuild") if record is not None else None) or {}
    facts = []
    for image, upstream in images:
        rebuild = rebuilds.get(image.name)
        if not rebuild or not rebuild.get("digest"):
            facts.append(ImageFacts(image.name, image.parameters, str(image.source), upstream,
                                    image.target.with_registry(named), copied[str(image.target)]))
            continue
        context = (planned.get(image.name) or {}).get("context") or ""
        facts.append(ImageFacts(image.name, image.parameters, str(image.source), upstream,
                                ImageRef.parse(str(rebuild["ref"])), str(rebuild["digest"]),
                                {**rebuild, "context": context}))

    def reach(ref: ImageRef) -> tuple[RegistryClient, ImageRef]:
        return local, ref.with_registry(local.host)

    parameters = {"deploy_settings": options.deploy_settings, "os_version": run.os_version}
    return trust_images(work, reach, facts, key, parameters, options.gerrit.url, options.jobs,
                        early.signed if early else None)


def signed_subjects(images: Sequence[DeploymentImage], results: Sequence[CopyResult],
                    rebuilds: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``repository@digest`` of every image ``trust_step`` signs (a rebuilt one under its ``:apex`` name)."""
    copied = {str(r.job.target): r.digest for r in results}
    out = set()
    for image in images:
        rebuild = rebuilds.get(image.name)
        if rebuild and rebuild.get("digest"):
            out.add(f"{ImageRef.parse(str(rebuild['ref'])).repository}@{rebuild['digest']}")
        elif copied.get(str(image.target)):
            out.add(f"{image.target.repository}@{copied[str(image.target)]}")
    return sorted(out)


def signature_digests(local: RegistryClient, subjects: Sequence[str], jobs: int,
                      known: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """``repository@digest`` → the digest of its signature attachment (None: none), one HEAD each, in parallel.

    A re-run compares these with what the last run recorded: a signature deleted or replaced
    (another key) is noticed without reading or verifying any signature. ``known``: digests this
    run just wrote or read (the signing's own answers), not asked again.
    """
    known = known or {}

    def head(subject: str) -> str | None:
        if subject in known:
            return known[subject]
        repository, digest = subject.split("@", 1)
        found = local.head_manifest(repository, attachment_tag(digest))
        return found[0] if found else None

    with ThreadPoolExecutor(max_workers=max(1, min(jobs * 2, len(subjects) or 1))) as pool:
        return dict(zip(subjects, pool.map(head, subjects)))
