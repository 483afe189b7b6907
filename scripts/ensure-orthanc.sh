#!/usr/bin/env bash
# Make sure the Orthanc DICOM server and its DICOMweb plugin are installed (Debian/Ubuntu packages),
# for the DICOMweb tests. Idempotent and fast (two file checks, a few ms) when they already are.
#
# The packages' own service is never started: the tests run their own private, loopback-only
# Orthanc instances (tests/orthanc.py), and a system-wide one would listen on every interface.
#
#   scripts/ensure-orthanc.sh            # install if missing (root, or sudo without a password)
#   scripts/ensure-orthanc.sh --check    # exit 0 if installed, 1 if not; installs nothing
set -euo pipefail

ORTHANC_BIN=/usr/sbin/Orthanc
DICOMWEB_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
PACKAGES=(orthanc orthanc-dicomweb)

installed() { [[ -x $ORTHANC_BIN && -f $DICOMWEB_PLUGIN ]]; }

if installed; then
    exit 0
fi
if [[ ${1:-} == --check ]]; then
    echo "Orthanc or its DICOMweb plugin is missing ($ORTHANC_BIN, $DICOMWEB_PLUGIN)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-orthanc: no apt-get here; install Orthanc (>= 1.10) and its DICOMweb plugin by hand," >&2
    echo "so that $ORTHANC_BIN and $DICOMWEB_PLUGIN exist. The DICOMweb tests are skipped without them." >&2
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "ensure-orthanc: installing ${PACKAGES[*]} needs root (or password-less sudo)." >&2
        echo "Run: sudo apt-get install --no-install-recommends ${PACKAGES[*]}" >&2
        exit 1
    fi
fi

POLICY=/usr/sbin/policy-rc.d
created_policy=0
LOG=$(mktemp)
cleanup() {
    if [[ $created_policy == 1 ]]; then "${SUDO[@]}" rm -f "$POLICY"; fi
    rm -f "$LOG"
}
trap cleanup EXIT

# Keep the packages' init scripts from starting a system-wide Orthanc: a policy-rc.d that denies every
# service start, removed again afterwards (only if we created it; Docker images often ship one).
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() { "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$LOG" 2>&1; }
echo "ensure-orthanc: installing ${PACKAGES[*]}" >&2
if ! apt_install; then
    # Stale or empty package lists (fresh containers ship without them): refresh once and retry.
    if ! { "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1 && apt_install; }; then
        echo "ensure-orthanc: apt-get failed:" >&2
        tail -n 30 "$LOG" >&2
        exit 1
    fi
fi

# Belt and braces: if some init system started the service anyway, stop it.
if command -v service >/dev/null 2>&1; then
    "${SUDO[@]}" service orthanc stop >/dev/null 2>&1 || true
fi

if ! installed; then
    echo "ensure-orthanc: installed ${PACKAGES[*]}, but $ORTHANC_BIN or $DICOMWEB_PLUGIN is still missing" >&2
    exit 1
fi
echo "ensure-orthanc: $("$ORTHANC_BIN" --version 2>&1 | sed -n 1p)" >&2
