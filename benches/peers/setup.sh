#!/usr/bin/env bash
# Installs the peer tools and servers the benches compare drover against or run on, each
# only when it is missing (re-running is cheap), from the package registries only: pip,
# apt-get and cargo. Nothing goes into the system Python except moto's server, which the
# tests install the same way (.ci/run).
#
#   bash benches/peers/setup.sh
#
# - Chaos Toolkit (PyPI `chaostoolkit`) into a venv at target/bench-peers/venv; the
#   engine bench runs target/bench-peers/venv/bin/chaos. CHAOSTOOLKIT_VERSION pins a
#   version.
# - moto's server and boto3 (PyPI `moto[server]`), s3s-fs 0.14.1 (crates.io), rclone and
#   GNU time (Debian) for the S3 bench; PostgreSQL 15 (Debian) for the store bench.
#
# A peer that cannot be installed is reported (and the benches say "not installed" in
# its rows); the script goes on with the others and exits 0. It exits 1 only when
# nothing could be checked at all (no python3).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/bench-peers/venv"
python="${PYTHON:-python3}"
spec="chaostoolkit${CHAOSTOOLKIT_VERSION:+==$CHAOSTOOLKIT_VERSION}"
nice=(nice -n "${BENCH_NICE:-10}")

if ! command -v "$python" >/dev/null 2>&1; then
    echo "peers: $python not found: cannot install Chaos Toolkit, moto or boto3" >&2
    exit 1
fi

say() { echo "peers: $*" >&2; }

apt_updated=""
# apt_install PACKAGE: installs one Debian package, or says why not.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        say "$1: not installed: no apt-get on this machine"
        return 1
    fi
    if [[ "$(id -u)" != 0 ]]; then
        say "$1: not installed: apt-get needs root"
        return 1
    fi
    if [[ -z "$apt_updated" ]]; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1 ||
        { say "$1: not installed: apt-get install $1 failed"; return 1; }
    say "$1 installed"
}

# Chaos Toolkit, in its own venv.
if [[ -x "$venv/bin/chaos" ]] && "$venv/bin/chaos" --version >/dev/null 2>&1; then
    say "chaos already installed: $("$venv/bin/chaos" --version 2>&1 | tail -n 1) ($venv)"
else
    mkdir -p "$(dirname "$venv")"
    if "$python" -m venv "$venv" &&
        "${nice[@]}" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip &&
        "${nice[@]}" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"; then
        say "chaos installed: $("$venv/bin/chaos" --version 2>&1 | tail -n 1) ($venv)"
    else
        say "chaos: not installed: pip install $spec into $venv failed"
    fi
fi

# moto's server (brings boto3), as the tests install it.
if command -v moto_server >/dev/null 2>&1 && "$python" -c "import boto3" >/dev/null 2>&1; then
    say "moto_server and boto3 already installed"
else
    "${nice[@]}" "$python" -m pip install --quiet --disable-pip-version-check 'moto[server]' ||
        say "moto: not installed: pip install 'moto[server]' failed"
fi

# s3s-fs, as the tests install it.
if command -v s3s-fs >/dev/null 2>&1 || [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]]; then
    say "s3s-fs already installed"
else
    "${nice[@]}" cargo install s3s-fs@0.14.1 --features binary --locked ||
        say "s3s-fs: not installed: cargo install s3s-fs@0.14.1 failed"
fi

# rclone and GNU time.
if command -v rclone >/dev/null 2>&1; then say "rclone already installed"; else apt_install rclone; fi
if [[ -x /usr/bin/time ]]; then say "GNU time already installed"; else apt_install time; fi

# PostgreSQL 15 server binaries (the store bench starts its own server).
if [[ -x /usr/lib/postgresql/15/bin/initdb ]] || command -v initdb >/dev/null 2>&1; then
    say "PostgreSQL server binaries already installed"
else
    apt_install postgresql-15
fi
exit 0
