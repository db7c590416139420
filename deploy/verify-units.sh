#!/usr/bin/env bash
# Checks the systemd units in deploy/ with `systemd-analyze verify`.
#
# verify insists that every Exec*= program exists and is executable, and the
# binaries are not installed on a build machine; so the units are copied into a
# temporary directory, /usr/local/bin/<name> is pointed at the freshly built
# binary when there is one (target/release or target/debug) and at a dummy
# executable otherwise, and the copies are verified. The units in deploy/ are
# never modified. Exit status: that of systemd-analyze (non-zero on any
# warning it reports as an error).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
target="${CARGO_TARGET_DIR:-$root/target}"

command -v systemd-analyze >/dev/null || {
    echo "verify-units: systemd-analyze is not installed (apt-get install systemd)" >&2
    exit 2
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/units"

for name in keyholderd keyholder keyholder-demo-app; do
    real=""
    for profile in release debug; do
        if [[ -x "$target/$profile/$name" ]]; then real="$target/$profile/$name"; break; fi
    done
    if [[ -n "$real" ]]; then
        ln -s "$real" "$work/bin/$name"
        echo "verify-units: $name -> $real"
    else
        printf '#!/bin/sh\nexit 0\n' >"$work/bin/$name"
        chmod 0755 "$work/bin/$name"
        echo "verify-units: $name -> dummy (not built yet)"
    fi
done

units=()
for unit in "$here"/*.service; do
    copy="$work/units/$(basename "$unit")"
    sed "s#/usr/local/bin/#$work/bin/#g" "$unit" >"$copy"
    units+=("$copy")
done

echo "verify-units: systemd-analyze verify ${units[*]##*/}"
# --man=no: the units carry no man: documentation links to look up.
status=0
output="$(systemd-analyze verify --man=no "${units[@]}" 2>&1)" || status=$?
if [[ -n "$output" ]]; then
    printf '%s\n' "$output"
fi
# verify exits 0 on some warnings; treat any line about our units as a failure.
if [[ $status -eq 0 ]] && grep -q "$work/units" <<<"$output"; then
    status=1
fi
# The hardening score (0 = locked down, 10 = exposed); fail above 3.0.
if [[ $status -eq 0 ]]; then
    for copy in "${units[@]}"; do
        systemd-analyze security --offline=yes --threshold=30 "$copy" 2>&1 \
            | grep "Overall exposure" || status=1
    done
fi
if [[ $status -eq 0 ]]; then
    echo "verify-units: ok"
else
    echo "verify-units: FAILED (status $status)" >&2
fi
exit "$status"
