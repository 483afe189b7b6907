#!/usr/bin/env bash
# Make sure the Tesseract OCR engine and its English model are installed (Debian/Ubuntu packages), for
# `medbeam dicom deidentify --redact-burned-in flagged|all` and its tests. Idempotent and fast (one file
# check) when they already are.
#
#   scripts/ensure-tesseract.sh            # install if missing (root, or sudo without a password)
#   scripts/ensure-tesseract.sh --check    # exit 0 if installed, 1 if not; installs nothing
set -euo pipefail

TESSERACT_BIN=/usr/bin/tesseract
PACKAGES=(tesseract-ocr tesseract-ocr-eng)

installed() { [[ -x $TESSERACT_BIN ]] && "$TESSERACT_BIN" --list-langs 2>/dev/null | grep -qx eng; }

if installed; then
    exit 0
fi
if [[ ${1:-} == --check ]]; then
    echo "Tesseract or its English model is missing ($TESSERACT_BIN, language eng)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-tesseract: no apt-get here; install Tesseract (>= 4) with its English model by hand," >&2
    echo "so that $TESSERACT_BIN --list-langs shows eng. The burned-in text tests are skipped without it." >&2
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "ensure-tesseract: installing ${PACKAGES[*]} needs root (or password-less sudo)." >&2
        echo "Run: sudo apt-get install --no-install-recommends ${PACKAGES[*]}" >&2
        exit 1
    fi
fi

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt_install() { "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$LOG" 2>&1; }
echo "ensure-tesseract: installing ${PACKAGES[*]}" >&2
if ! apt_install; then
    # Stale or empty package lists (fresh containers ship without them): refresh once and retry.
    if ! { "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1 && apt_install; }; then
        echo "ensure-tesseract: apt-get failed:" >&2
        tail -n 30 "$LOG" >&2
        exit 1
    fi
fi

if ! installed; then
    echo "ensure-tesseract: installed ${PACKAGES[*]}, but $TESSERACT_BIN or its eng model is still missing" >&2
    exit 1
fi
echo "ensure-tesseract: $("$TESSERACT_BIN" --version 2>&1 | sed -n 1p)" >&2
