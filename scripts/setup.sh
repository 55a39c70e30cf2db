# shellcheck shell=bash
# Set-up steps shared by scripts/apex and scripts/test. Source it; call the ensure_* functions.
#
# Each step is idempotent and silent when there is nothing to do, so running a command twice
# costs a few milliseconds of checks. Messages go to stderr, prefixed "setup:".

APEX_REPO="${APEX_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
APEX_DOCKERD_LOG="${APEX_DOCKERD_LOG:-/var/log/apex-dockerd.log}"

_setup_say() { echo "setup: $*" >&2; }

_setup_fail() {
    echo "setup: error: $1" >&2
    [[ -n ${2:-} ]] && echo "setup: hint: $2" >&2
    return 1
}

# The names of the given Debian packages that are not installed.
_missing_debian_packages() {
    local name status
    for name in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$name" 2>/dev/null) || status=""
        [[ $status == ii* ]] || echo "$name"
    done
}

# apt-get install the named packages that are missing (apt-get update once per shell first).
_apt_install() {
    local missing
    mapfile -t missing < <(_missing_debian_packages "$@")
    ((${#missing[@]})) || return 0
    if ((EUID != 0)); then
        _setup_fail "missing Debian packages: ${missing[*]}" "run as root, or: sudo apt-get install ${missing[*]}"
        return 1
    fi
    _setup_say "installing Debian packages: ${missing[*]}"
    if [[ -z ${_APEX_APT_UPDATED:-} ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
        _APEX_APT_UPDATED=1
    fi
    # No package starts its service (libvirt-daemon-system's libvirtd would bring up its default
    # network, docker.io's dockerd a bridge): a policy-rc.d for the install, unless one is there.
    local policy=/usr/sbin/policy-rc.d placed="" rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# apex-tools setup: no service starts during its apt-get install\nexit 101\n' >"$policy" &&
            chmod 755 "$policy" && placed=1
    fi
    # NEEDRESTART_MODE=l: list, never restart, services (needrestart comes with docker.io).
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l \
        apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null || rc=1
    [[ -n $placed ]] && rm -f "$policy"
    return $rc
}

# Every package of scripts/debian-packages.txt (one name a line; # starts a comment).
ensure_debian_packages() {
    local wanted
    mapfile -t wanted < <(sed -e 's/#.*//' "$APEX_REPO/scripts/debian-packages.txt" | awk 'NF {print $1}')
    _apt_install "${wanted[@]}" && _no_libvirt_default_network
}

# Debian's libvirt marks its 'default' NAT network (virbr0, 192.168.122.1/24, dnsmasq) autostart:
# a libvirtd started here (the VM lab starts one) would bring it up in this host's namespace.
# The mark goes; the VM lab refuses to start libvirtd while it is there.
_no_libvirt_default_network() {
    local mark=/etc/libvirt/qemu/networks/autostart/default.xml
    [[ -e $mark || -L $mark ]] || return 0
    ((EUID == 0)) || { _setup_fail "$mark exists" "remove it as root (libvirt's default network must not autostart)"; return 1; }
    _setup_say "removing $mark (libvirt's default network must not autostart on this host)"
    rm -f "$mark"
}

# Debian's own python3 is the reference interpreter: the one a fresh Debian 12 has (3.11.2),
# never whatever comes first on PATH, so the README's commands, CI and the image agree.
APEX_PYTHON="${APEX_PYTHON:-/usr/bin/python3}"

# Debian's python3 able to make virtual environments (Debian splits venv/ensurepip off).
_ensure_python() {
    if [[ -x $APEX_PYTHON ]] && "$APEX_PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        return 0
    fi
    _apt_install python3 python3-venv
}

# The virtual environment .venv with the package installed editable, test extra included.
# Reinstalled only when pyproject.toml (or the python it was made with) changed.
ensure_venv() {
    local venv="$APEX_REPO/.venv" stamp want
    stamp="$venv/.apex-setup-stamp"
    want="$(sha256sum "$APEX_REPO/pyproject.toml" | cut -d' ' -f1)"
    if [[ -f $stamp && $(<"$stamp") == "$want $("$venv/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null)" ]]; then
        _compile_package
        return 0
    fi
    _ensure_python || return 1
    # A venv made from another interpreter is remade from Debian's.
    if ! "$venv/bin/python" -c '' 2>/dev/null ||
        [[ $("$venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))' 2>/dev/null) != "$(readlink -f "$APEX_PYTHON")" ]]; then
        _setup_say "creating the virtual environment $venv from $APEX_PYTHON"
        rm -rf "$venv"
        "$APEX_PYTHON" -m venv "$venv" || return 1
    fi
    _setup_say "installing apex-tools and its test extra into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "${APEX_REPO}[test]" || return 1
    _compile_package
    # Written last (and via rename): an interrupted install leaves no stamp, so it is redone.
    echo "$want $("$venv/bin/python" -c 'import sys; print(sys.version)')" >"$stamp.tmp" && mv "$stamp.tmp" "$stamp"
}

# The editable package's bytecode, as pip writes it for every installed package: with
# PYTHONDONTWRITEBYTECODE set (as on this machine and in the tool image) Python never caches it,
# and every apex run compiled its ~100 modules again. Only what changed is recompiled (about 20 ms
# when nothing did).
_compile_package() {
    "$APEX_REPO/.venv/bin/python" -m compileall -q "$APEX_REPO/apex_tools" >/dev/null || true
}

# A Docker engine answering on its socket. A running one is left alone; otherwise dockerd is
# started in the background as DESIGN.md says: never with its default bridge (172.17.x is
# off-limits here), so builds and containers use --network host.
ensure_docker() {
    docker info >/dev/null 2>&1 && return 0
    command -v dockerd >/dev/null || {
        _setup_fail "no Docker engine answers and dockerd is not installed" "apt-get install docker.io"
        return 1
    }
    if ((EUID != 0)); then
        _setup_fail "no Docker engine answers on ${DOCKER_HOST:-/var/run/docker.sock}" \
            "start it as root: dockerd --bridge=none --iptables=false --ip-masq=false"
        return 1
    fi
    _setup_say "starting dockerd (log: $APEX_DOCKERD_LOG)"
    # setsid + nohup: the engine outlives this shell, as a service would.
    setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false \
        >>"$APEX_DOCKERD_LOG" 2>&1 </dev/null &
    local pid=$! waited=0
    until docker info >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$APEX_DOCKERD_LOG" >&2
            _setup_fail "dockerd exited at start (pid $pid)" "read $APEX_DOCKERD_LOG"
            return 1
        fi
        if ((waited >= 120)); then
            _setup_fail "dockerd (pid $pid) did not answer within 60 s" "read $APEX_DOCKERD_LOG"
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    _setup_say "dockerd is up (pid $pid)"
}
