"""Effective configuration: defaults, config files, ``APEX_*`` variables and flags, with provenance.

The layering is done here rather than by Invoke's own ``Config`` so that ``invoke deploy``
(Invoke's program, ``INVOKE_`` prefix) and ``apex deploy`` (our program) see exactly the
same values: Invoke only contributes the files it loaded (``-f FILE``, ``/etc/apex.yaml``,
``~/.apex.yaml``, ``./apex.yaml``), handed in as layers by the program edge (``main.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from apex_tools.core.errors import SettingsError
from apex_tools.core.render_safety import control_char, shown
from apex_tools.core.resources import data_path

LOG = logging.getLogger(__name__)

ENV_PREFIX = "APEX_"

# Every default in one place. Top-level sections, not an ``apex:`` wrapper, so that the
# environment variable for ``registry.address`` is ``APEX_REGISTRY_ADDRESS``. No value is a
# list or None: Invoke cannot cast those from the environment.
DEFAULTS: dict[str, Any] = {
    # A bundled scenario name (config/deploy/<name>.yaml) or a path to a file.
    "deploy_settings": "os-nosdn-nofeature-noha",
    "network_settings": "network_settings",
    "patches_file": "common-patches",
    # The overcloud nodes (Apex's inventory format): a bundled name (config/inventory/<name>.yaml) or a path.
    "inventory_file": "virtual",
    "work_dir": "/var/lib/apex-tools",
    "image_dir": "/var/cache/apex-tools/images",
    "upstream": {
        "images_url": "https://images.rdoproject.org/{os_version}/rdo_trunk/current-tripleo/",
        "registry": "docker.io",
        "namespace": "tripleo{os_version}",
        "name_prefix": "centos-binary-",
        "tag": "current-tripleo",
        "insecure": False,
        # push-registry: TLS mode verify | no-verify | http; "" = http when insecure, else verify.
        "tls": "",
        # Credentials; "" = the docker config.json entry for the registry, else anonymous.
        "username": "",
        "password": "",
        # Where the Ceph daemon image is pulled from; "" = the release's (tripleo-common's
        # container_image_prepare_defaults.yaml, e.g. docker.io); `apex config` shows it.
        "ceph_registry": "",
    },
    # Anonymous REST; `timeout` seconds a request, `tries` attempts on errors, 429 and 5xx.
    "gerrit": {"url": "https://review.opendev.org", "timeout": 30.0, "tries": 4},
    # An empty address means "<admin installer_vm.ip>:8787" from the network settings.
    # The undercloud registry of TripleO speaks plain HTTP, hence insecure by default.
    # push-registry: `tls`, `username`, `password` as for upstream; `start` runs Debian's
    # docker-registry (storage under the work dir) when the address is this machine's and silent.
    "registry": {"address": "", "insecure": True, "tls": "", "username": "", "password": "", "start": True},
    # native: patched images are made over the registry API (no engine); docker | buildah: by an engine.
    # Images needing more than patches (an OpenDaylight reinstall) go to `builder_fallback`'s engine.
    "builder": "native",
    "builder_fallback": "docker",
    "jobs": 4,
    # Use cached artifacts only and never ask upstream (offline runs).
    "no_fetch": False,
    # Disconnected: every target reads only the cache, the work dir and the local registry
    # (filled by `apex bundle import`) and names what is missing; implies no_fetch.
    "offline": False,
    # Seconds a run waits for another run holding the same work dir; 0 fails at once.
    "lock_timeout": 0,
    # fetch-images: which artifacts, how they are verified, how hard to try.
    "fetch": {
        # Also fetch undercloud.qcow2 (Apex did on aarch64); otherwise only the two tarballs.
        "undercloud_image": False,
        # Pinned sha256 per artifact, checked on top of upstream's md5/sha256 sidecars; "" = none.
        "overcloud_sha256": "",
        "ipa_sha256": "",
        "undercloud_sha256": "",
        # Attempts per request; waits start at `backoff` seconds, double, and never exceed
        # `max_wait` (a longer Retry-After fails at once rather than hanging the run).
        "tries": 5,
        "backoff": 1.0,
        "max_wait": 60.0,
        # A read that stalls this long counts as a dropped connection (and is resumed).
        "connect_timeout": 10.0,
        "read_timeout": 60.0,
    },
    # patch-containers: how patches are read, filtered and applied.
    "patching": {
        # Site-packages folder patched in images; "" = build/projects.yaml's for the OpenStack version.
        "python_path": "",
        # Comma-separated patterns of diff files never installed (release notes; tests: python tests/, puppet spec/).
        "drop": "releasenotes/*,tests/*,*/tests/*,spec/*",
        # A YAML file of local patches not on Gerrit ({overcloud,undercloud}: [{path, project}]), or a
        # bundled one by name (config/patches/<name>.yaml); "" = none.
        "local_patches": "",
        # Package repository of an OpenDaylight release ({release}), for the opendaylight image rebuild.
        "odl_repo_url": "https://nexus.opendaylight.org/content/repositories/opendaylight-{release}-epel-7-x86_64-devel/",
    },
    # undercloud: which driver provides it (libvirt: a VM on this host; existing: an installed
    # undercloud over SSH; local: this host plays the undercloud) and how it is reached.
    "undercloud": {
        "driver": "libvirt",
        # existing: the host to reach; libvirt: found from the VM's DHCP lease when empty.
        "host": "",
        "user": "stack",
        "port": 22,
        # The private key the undercloud is reached with (libvirt: generated when missing).
        "ssh_key": "~/.ssh/id_rsa",
        # An OpenSSH known_hosts file holding the undercloud's host key; "" = trust on first use:
        # the key is recorded in work_dir/undercloud/known_hosts at first contact and required
        # after (undercloud --recreate forgets it).
        "known_hosts": "",
        # Seconds the target waits for the VM's lease and SSH before failing.
        "wait_timeout": 600.0,
        # Seconds configure_undercloud.yaml (with `openstack undercloud install`) may take.
        "playbook_timeout": 7200.0,
        # The stack user's home on the undercloud (undercloud.conf, stackrc, where deploy puts its
        # files and runs the command); "" = the user's own there. Was also deploy.stack_home.
        "home": "",
        # Where TripleO's heat templates and ceph-ansible live on the undercloud.
        "templates_dir": "/usr/share/openstack-tripleo-heat-templates",
        "ceph_ansible_dir": "/usr/share/ceph-ansible",
        # push-registry reaches the undercloud's registry through an SSH local forward:
        # auto = for the libvirt and existing drivers unless the registry address is this
        # host's; always; never. `registry_remote` is the forward's far end as the undercloud
        # reaches it ("" = the registry address).
        "forward_registry": "auto",
        "registry_remote": "",
        # libvirt: the domain, its size, the storage pool (defined at pool_path when missing),
        # the connection and the NAT network the first NIC (and SSH) uses.
        "name": "undercloud",
        "memory": 10240,
        "vcpus": 4,
        "disk_size": "50G",
        "pool": "default",
        "pool_path": "/var/lib/libvirt/images",
        "libvirt_uri": "qemu:///system",
        "nat_network": "default",
        # libvirt: a port on 127.0.0.1 forwarded to the VM's SSH through user-mode networking
        # (its first NIC; no NAT network, no lease); 0 = the NAT network's lease.
        "ssh_forward": 0,
        # libvirt: give the VM a NIC on the Apex networks (admin, external: isolated bridges on this host).
        "apex_networks": True,
        # libvirt: run the domain's qemu as root rather than libvirt's qemu user (which must
        # otherwise be able to reach pool_path, e.g. not under a 0700 folder).
        "qemu_as_root": False,
    },
    # deploy: `timeout` minutes for `openstack overcloud deploy`; `libvirt_type` kvm | qemu
    # ("" = kvm on baremetal, and for VMs only where this host's /dev/kvm is usable and nested);
    # (The stack user's home is undercloud.home; deploy.stack_home is its old name, still read.)
    "deploy": {"timeout": 120, "libvirt_type": ""},
    # ceph-loop: the loop device backing the OSDs when the deploy settings name no
    # ceph_device, and ceph-ansible's pool settings. `virtual` (VMs as overcloud nodes)
    # picks the loop file size and adds OSD/MDS container memory limits; baremetal is the
    # default because a 1g memory limit on real hardware is the worse silent mistake.
    "ceph": {
        "virtual": False,
        "loop_device": "/dev/loop3",
        "loop_file": "/srv/data.img",
        "loop_size_virtual": "10G",
        "loop_size_baremetal": "50G",
        "pool_size": 2,
        "pg_num": 32,
        # The Ceph daemon image <upstream.ceph_registry>/<namespace>/<image>:<tag> (ceph_namespace,
        # ceph_image, ceph_tag of ContainerImagePrepare); "" = the release's.
        "namespace": "",
        "image": "",
        "tag": "",
    },
    # push-registry signs every deployment image (sigstore format) with `key`, a PEM private key
    # (mode 0600; "" = one generated once into work_dir/signing/); the overcloud requires it.
    "signing": {"enabled": True, "key": ""},
}

BUILDERS = ("docker", "buildah")


# Values that reach a shell line, a root script or a document, and what they may hold.
_PATH = r"^/[A-Za-z0-9._+@%=,/-]*$"
_USER = r"^[a-z_][a-z0-9_-]{0,31}$"
ALLOWED = {
    _PATH: "an absolute path of letters, digits and . _ + @ % = , - /",
    r"^(/[A-Za-z0-9._+@%=,/-]*)?$": "empty, or an absolute path of letters, digits and . _ + @ % = , - /",
    _USER: "a login name: lowercase letters, digits, _ and -, starting with a letter or _, at most 32",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """No configuration value holds a newline or another control character: each may end up
        in a Dockerfile, a script, XML or YAML."""
        text = str(value) if isinstance(value, (str, PurePath)) else ""
        if control_char(text):
            raise ValueError(f"contains the control character {control_char(text)}; none is allowed")
        return value


class _RegistryAccess(_Strict):
    """How to talk to a registry: TLS mode (empty: derived from ``insecure``) and credentials."""

    insecure: bool
    tls: Literal["", "verify", "no-verify", "http"]
    username: str
    password: str = Field(repr=False)

    @property
    def tls_mode(self) -> str:
        """The explicit TLS mode, or the one ``insecure`` implies (plain HTTP when insecure)."""
        return self.tls or ("http" if self.insecure else "verify")


class UpstreamOptions(_RegistryAccess):
    images_url: str
    registry: str
    namespace: str
    name_prefix: str
    tag: str
    ceph_registry: str


class GerritOptions(_Strict):
    url: str
    timeout: float = Field(gt=0)
    tries: int = Field(ge=1, le=20)


class RegistryOptions(_RegistryAccess):
    address: str
    start: bool


class FetchOptions(_Strict):
    undercloud_image: bool
    overcloud_sha256: str
    ipa_sha256: str
    undercloud_sha256: str
    tries: int = Field(ge=1, le=100)
    backoff: float = Field(ge=0)
    max_wait: float = Field(ge=0)
    connect_timeout: float = Field(gt=0)
    read_timeout: float = Field(gt=0)


class PatchingOptions(_Strict):
    # Becomes `RUN cd <python_path>` in the generated Dockerfiles.
    python_path: str = Field(pattern=r"^(/[A-Za-z0-9._+@%=,/-]*)?$")
    drop: str
    local_patches: str
    odl_repo_url: str

    @property
    def drop_patterns(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.drop.split(",") if p.strip())


class UndercloudOptions(_Strict):
    driver: Literal["libvirt", "existing", "local"]
    host: str
    # Becomes a user in a root script in the guest and /etc/sudoers.d/<user>.
    user: str = Field(pattern=_USER)
    port: int = Field(ge=1, le=65535)
    ssh_key: str
    known_hosts: str
    wait_timeout: float = Field(gt=0)
    playbook_timeout: float = Field(gt=0)
    home: str = Field(pattern=r"^(/.*)?$")
    templates_dir: str = Field(pattern=r"^/")
    ceph_ansible_dir: str = Field(pattern=r"^/")
    forward_registry: Literal["auto", "always", "never"]
    registry_remote: str
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    memory: int = Field(ge=1024)
    vcpus: int = Field(ge=1, le=256)
    disk_size: str = Field(pattern=r"^[1-9][0-9]*[MGT]$")
    pool: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # Written into libvirt's pool XML.
    pool_path: str = Field(pattern=_PATH)
    libvirt_uri: str = Field(min_length=1)
    nat_network: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ssh_forward: int = Field(ge=0, le=65535)
    apex_networks: bool
    qemu_as_root: bool

    @property
    def key_path(self) -> Path:
        return Path(self.ssh_key).expanduser()


class DeployOptions(_Strict):
    timeout: int = Field(ge=1, le=1440)
    libvirt_type: Literal["", "kvm", "qemu"]


class CephOptions(_Strict):
    virtual: bool
    loop_device: str = Field(pattern=r"^/dev/[A-Za-z0-9._/-]+$")
    loop_file: str = Field(pattern=r"^/[A-Za-z0-9._/-]+$")
    # truncate(1) sizes: a number with an optional K/M/G/T suffix.
    loop_size_virtual: str = Field(pattern=r"^[1-9][0-9]*[KMGT]?$")
    loop_size_baremetal: str = Field(pattern=r"^[1-9][0-9]*[KMGT]?$")
    pool_size: int = Field(ge=1, le=10)
    pg_num: int = Field(ge=1)
    namespace: str = Field(pattern=r"^([a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*)?$")
    image: str = Field(pattern=r"^([a-z0-9][a-z0-9._-]*)?$")
    tag: str = Field(pattern=r"^([A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$")


class SigningOptions(_Strict):
    enabled: bool
    key: str


class Options(_Strict):
    """The validated, typed effective configuration."""

    deploy_settings: str
    network_settings: str
    patches_file: str
    inventory_file: str
    work_dir: Path
    image_dir: Path
    upstream: UpstreamOptions
    gerrit: GerritOptions
    registry: RegistryOptions
    builder: Literal["native", "docker", "buildah"]
    builder_fallback: Literal["docker", "buildah"]
    jobs: int = Field(ge=1, le=64)
    no_fetch: bool
    offline: bool
    lock_timeout: float = Field(ge=0)
    fetch: FetchOptions
    patching: PatchingOptions
    undercloud: UndercloudOptions
    deploy: DeployOptions
    ceph: CephOptions
    signing: SigningOptions

    @property
    def cache_only(self) -> bool:
        """Never ask upstream (``no_fetch``, or ``offline`` which implies it)."""
        return self.no_fetch or self.offline


@dataclass(frozen=True)
class Layer:
    """One source of values: its name for humans and its (nested) data."""

    source: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class EffectiveConfig:
    """Options plus, for every dotted key, the layer its value came from."""

    options: Options
    sources: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


_DEFAULT_VALUES = flatten(DEFAULTS)
KNOWN_KEYS = tuple(_DEFAULT_VALUES)
_SECTIONS = {k.split(".")[0] for k in KNOWN_KEYS if "." in k}


def env_name(key: str) -> str:
    """The environment variable of a dotted key: ``registry.address`` → ``APEX_REGISTRY_ADDRESS``."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def _cast(key: str, raw: str, source: str) -> Any:
    default = _DEFAULT_VALUES[key]
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(
            f"{source}: {key}: {shown(key, raw)} is not a boolean",
            "use one of 1/true/yes/on or 0/false/no/off",
        )
    if isinstance(default, (int, float)):
        try:
            return type(default)(raw)
        except ValueError:
            raise SettingsError(
                f"{source}: {key}: {shown(key, raw)} is not a number", f"give {key} as a {type(default).__name__}"
            ) from None
    return raw


def env_layer(environ: Mapping[str, str]) -> Layer:
    """The ``APEX_*`` variables that name a known key, cast to the default's type."""
    values: dict[str, Any] = {}
    for key in KNOWN_KEYS:
        name = env_name(key)
        if name in environ:
            values[key] = _cast(key, environ[name], f"environment {name}")
    for old, new in RENAMED.items():  # resolve() says it is deprecated
        if env_name(old) in environ:
            values[old] = _cast(new, environ[env_name(old)], f"environment {env_name(old)}")
    return Layer("environment", _nest(values))


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


# Old key → the one that replaced it: still read (the new one wins), with a deprecation line.
RENAMED = {"deploy.stack_home": "undercloud.home"}


def _unknown_keys(layer: Layer, foreign_keys: frozenset[str]) -> list[str]:
    problems = []
    for key, value in layer.data.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                problems.append(f"{layer.source}: {key}: {shown(key, value)} is not a mapping (a section: "
                                f"{key}: followed by indented key: value lines)")
                continue
            for sub in value:
                if f"{key}.{sub}" not in KNOWN_KEYS and f"{key}.{sub}" not in RENAMED:
                    allowed = ", ".join(k for k in KNOWN_KEYS if k.startswith(key + "."))
                    problems.append(f"{layer.source}: {key}.{sub}: unknown key (allowed: {allowed})")
        elif key not in KNOWN_KEYS and key not in foreign_keys:
            allowed = ", ".join(sorted({k.split('.')[0] for k in KNOWN_KEYS}))
            problems.append(f"{layer.source}: {key}: unknown key (allowed: {allowed})")
    return problems


def resolve(layers: Iterable[Layer], foreign_keys: frozenset[str] = frozenset()) -> EffectiveConfig:
    """Merge ``layers`` (lowest first) over the defaults and validate; ``foreign_keys`` are
    top-level keys of the same files that belong to someone else (Invoke's own settings)."""
    values = dict(_DEFAULT_VALUES)
    sources = dict.fromkeys(values, "default")
    problems: list[str] = []
    for layer in layers:
        problems += _unknown_keys(layer, foreign_keys)
        given = flatten(layer.data)
        for key, value in given.items():
            new = RENAMED.get(key)
            if new is not None:
                LOG.warning("%s: %s is deprecated: it is now %s%s", layer.source, key, new,
                            f" (ignored: {new} is set too)" if new in given else "")
                if new in given:
                    continue
                key = new
            if key in values:
                values[key] = value
                sources[key] = layer.source
    try:
        options = Options.model_validate(_nest(values))
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            pattern = (err.get("ctx") or {}).get("pattern")
            msg = f"allowed: {ALLOWED[pattern]}" if pattern in ALLOWED else err["msg"].removeprefix("Value error, ")
            problems.append(f"{sources.get(key, 'default')}: {key}: {shown(key, values.get(key))}: {msg}")
    if problems:
        raise SettingsError(
            "invalid configuration:\n  " + "\n  ".join(problems),
            "fix the values named above; `apex config` shows every key and where it came from",
        )
    return EffectiveConfig(options=options, sources=sources, values=values)


def effective_config(
    file_layers: Iterable[Layer],
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    foreign_keys: frozenset[str] = frozenset(),
) -> EffectiveConfig:
    """Defaults, then the config files, then ``APEX_*`` variables, then task flags."""
    layers = list(file_layers) + [env_layer(environ)]
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    if given:
        layers.append(Layer("flag", _nest(given)))
    return resolve(layers, foreign_keys)


def settings_path(value: str, kind: str) -> Path:
    """A settings value as a file: a path as given, or a bundled file by name (``config/<kind>/``)."""
    path = Path(value).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in value:
        return path
    # A bare name is a bundled file first: a `lab` entry in the working directory never
    # shadows the bundled inventory `lab` (give ./lab to mean that one).
    bundled = data_path("config", kind, value + ".yaml") if kind else data_path("config", value + ".yaml")
    if bundled.is_file():
        return bundled
    if path.exists():
        return path
    folder = data_path("config", kind) if kind else data_path("config")
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    raise SettingsError(
        f"{value!r} is neither a file nor a bundled {kind or 'config'} file",
        f"give a path, or one of: {', '.join(names)}",
    )
