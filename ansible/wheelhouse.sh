#!/usr/bin/env bash
# Build a wheelhouse: wheels of tandem's runtime dependencies and of its build
# backend, for installing tandem with the Ansible role on hosts that reach no
# package index (the role's `tandem_wheelhouse`).  The wheels are built for the
# Python that runs this script, so run it with the targets' Python version and
# architecture (Debian 12: CPython 3.11).
#
#   ansible/wheelhouse.sh OUTDIR [PYTHON]
set -euo pipefail
out=${1:?usage: wheelhouse.sh OUTDIR [PYTHON]}
py=${2:-python3}
root="$(cd "$(dirname "$0")/.." && pwd)"
mapfile -t reqs < <("$py" - "$root/pyproject.toml" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as fh:
    doc = tomllib.load(fh)
print("\n".join(doc["build-system"]["requires"] + ["wheel"] + doc["project"]["dependencies"]))
EOF
)
mkdir -p "$out"
rm -f "$out/.complete"
"$py" -m pip wheel -q --disable-pip-version-check --wheel-dir "$out" "${reqs[@]}"
touch "$out/.complete"
