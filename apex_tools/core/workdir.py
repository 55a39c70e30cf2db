"""The names targets hand each other through the image cache and the work dir.

A target never imports another target: what one makes and the next reads is named here, once.
Each target's state record is saved under the target's own name.
"""

from __future__ import annotations

from pathlib import Path

from apex_tools.core.config import Options

# work_dir/state: the targets' records (core/state.py); work_dir/registry: the local registry's files.
STATE_DIR = "state"
REGISTRY_DIR = "registry"

# Target names, which are also their state-record names.
FETCH_IMAGES = "fetch-images"
UNDERCLOUD = "undercloud"
PATCH_CONTAINERS = "patch-containers"
CEPH_LOOP = "ceph-loop"
PUSH_REGISTRY = "push-registry"
DEPLOY = "deploy"
# Not in the deploy chain: `apex bundle export` / `apex bundle import` (disconnected sites).
BUNDLE_EXPORT = "bundle-export"
BUNDLE_IMPORT = "bundle-import"

# fetch-images → image_dir/<os_version>/
OVERCLOUD_TAR = "overcloud-full.tar"
IPA_TAR = "ironic-python-agent.tar"
UNDERCLOUD_QCOW2 = "undercloud.qcow2"
OVERCLOUD_QCOW2 = "overcloud-full.qcow2"

# undercloud → work_dir/undercloud/: the playbook's output, the fetched install log
UNDERCLOUD_DIR = "undercloud"
CONFIGURE_LOG = "configure_undercloud.log"
INSTALL_LOG = "apex-undercloud-install.log"
# The undercloud's SSH host key, recorded at first contact (unless undercloud.known_hosts is set)
KNOWN_HOSTS = "known_hosts"

# patch-containers → work_dir/
CONTAINERS_DIR = "containers"
PATCH_ARCHIVE = "docker_patches.tar.gz"
IMAGE_PATCHES_DIR = "image_patches"

# patch-containers' caches (work_dir/): Gerrit's answers and the upstream lookups, for no_fetch runs
GERRIT_CACHE = "cache/gerrit"
LOOKUPS_CACHE = "cache/upstream-lookups.json"

# ceph-loop → work_dir/ (the customized copy keeps the upstream image's name)
CUSTOM_IMAGE = OVERCLOUD_QCOW2
STORAGE_ENV = "storage-environment.yaml"
# ceph-loop and the undercloud image prep → work_dir/state/: the libguestfs backend that worked here
LIBGUESTFS_MEMORY = "state/libguestfs.json"

# push-registry → work_dir/
IMAGE_LISTS = ("overcloud_containers.yaml", "sdn_containers.yaml")
PARAMETER_FILE = "docker-images.yaml"

# deploy → work_dir/ (copied to the stack user's home on the undercloud)
DEPLOY_COMMAND = "deploy_command"
INSTACKENV = "instackenv.json"
NETWORK_ENV = "network-environment.yaml"
UPSTREAM_ENV = "upstream-environment.yaml"
VIRTUAL_ENV = "virtual-environment.yaml"
BAREMETAL_ENV = "baremetal-environment.yaml"
NETWORK_DATA = "network_data.yaml"
# deploy → work_dir/, fetched back from the undercloud (the deploy's output; the stack's failures)
DEPLOY_LOG = "overcloud-deploy.log"
STACK_FAILURES = "stack-failures.log"
# The upstream images `openstack overcloud image upload` takes besides the customized qcow2.
UPLOAD_IMAGES = ("overcloud-full.vmlinuz", "overcloud-full.initrd", "ironic-python-agent.kernel",
                 "ironic-python-agent.initramfs")


def artifact_dir(options: Options, os_version: str) -> Path:
    """The image cache folder of one OpenStack version."""
    return Path(options.image_dir) / os_version


def overcloud_image(options: Options, os_version: str) -> Path:
    """The unpacked upstream overcloud disk image (read-only for other targets: copy before changing)."""
    return artifact_dir(options, os_version) / OVERCLOUD_QCOW2
