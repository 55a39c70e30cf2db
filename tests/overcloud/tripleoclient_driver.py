"""Run a release's own python-tripleoclient ``overcloud deploy`` on a command line, up to its first
use of a cloud. Executed by the client's venv (tests/overcloud/test_tripleoclient.py), never
imported by the suite.

    python tripleoclient_driver.py ARG...   # the arguments after ``openstack overcloud deploy``

The client's own parser, ``_validate_args`` and every check ``take_action`` makes before it
needs Heat run for real; the cloud clients are tripwires: the first call on one ends the run
(``reached``). Master's client also launches its ephemeral Heat and would run container image
prepare from the release defaults; both are tripwires too, and the undercloud's /etc/hosts entry
it reads is given. Prints one JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
from unittest import mock


class ReachedCloud(Exception):
    """The client got past its own checks and called a cloud service."""


class Tripwire:
    """A cloud client: attributes are more tripwires, a call ends the run."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> "Tripwire":
        return Tripwire(f"{self._name}.{attr}")

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise ReachedCloud(self._name)


class ClientManager:
    def __getattr__(self, name: str) -> Tripwire:
        return Tripwire(name)


class PrepareWouldRun(Exception):
    """The client would prepare container images itself (from the release defaults, on quay.io)."""


def _prepare(*args: object, **kwargs: object) -> None:
    raise PrepareWouldRun("the client would run its own container image prepare (ContainerImagePrepare "
                          "from the release defaults; pass --disable-container-prepare)")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from tripleoclient.v1 import overcloud_deploy

    app = mock.Mock()
    app.client_manager = ClientManager()
    cmd = overcloud_deploy.DeployOvercloud(app, None)
    parser = cmd.get_parser("openstack overcloud deploy")
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        print(json.dumps({"outcome": "refused", "error": "the parser rejected the command line (see stderr)"}))
        return 0
    from tripleoclient import utils

    patches = []
    if hasattr(utils, "get_undercloud_host_entry"):  # a fact of the undercloud host (its /etc/hosts)
        patches.append(mock.patch.object(utils, "get_undercloud_host_entry",
                                         lambda: "192.0.2.1 undercloud.ctlplane undercloud"))
    if hasattr(overcloud_deploy.DeployOvercloud, "setup_ephemeral_heat"):
        patches.append(mock.patch.object(overcloud_deploy.DeployOvercloud, "setup_ephemeral_heat",
                                         Tripwire("ephemeral heat launch")))
    try:
        from tripleo_common.image import kolla_builder
    except ImportError:
        pass
    else:
        patches.append(mock.patch.object(kolla_builder, "container_images_prepare_multi", _prepare))
    for patch in patches:
        patch.start()
    try:
        cmd.take_action(args)
    except ReachedCloud as exc:
        outcome = {"outcome": "reached", "at": str(exc)}
    except Exception as exc:  # the client refused: its own message is the point
        outcome = {"outcome": "refused", "error": f"{type(exc).__name__}: {exc}"}
    else:
        outcome = {"outcome": "returned"}
    outcome["disable_container_prepare"] = bool(getattr(args, "disable_container_prepare", False))
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
