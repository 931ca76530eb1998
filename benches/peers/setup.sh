#!/usr/bin/env bash
# Installs the peer tools that `cargo bench -p drover-benches --bench engine` compares
# drover against, into target/bench-peers/ (never into the system Python).
#
#   bash benches/peers/setup.sh
#
# Chaos Toolkit (PyPI `chaostoolkit`) goes into a venv at target/bench-peers/venv; the
# bench runs target/bench-peers/venv/bin/chaos. Re-running is cheap: an existing venv
# with chaos in it is kept. Set CHAOSTOOLKIT_VERSION to pin another version.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/bench-peers/venv"
python="${PYTHON:-python3}"
spec="chaostoolkit${CHAOSTOOLKIT_VERSION:+==$CHAOSTOOLKIT_VERSION}"

if [[ -x "$venv/bin/chaos" ]] && "$venv/bin/chaos" --version >/dev/null 2>&1; then
    echo "chaos already installed: $("$venv/bin/chaos" --version 2>&1 | tail -n 1) ($venv)"
    exit 0
fi

mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
echo "chaos installed: $("$venv/bin/chaos" --version 2>&1 | tail -n 1) ($venv)"
