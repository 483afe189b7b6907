#!/usr/bin/env bash
# Make sure the local BigQuery emulator (PyPI `local-bigquery`) is installed in its own virtual
# environment, for the BigQuery tests (tests/bigquery_emulator.py). Idempotent: a stamp check (a few ms)
# when it already is; a fresh install takes about a minute.
#
# The emulator needs Python >= 3.13 and gets its OWN venv: its pytest plugin (a `pytest11` entry point)
# must stay out of the project's environment. It runs DuckDB, which would download its extensions at
# start-up (and fail offline); the pinned extension wheels carry them, and their files are gathered here
# into an extension directory the test fixture links into the emulator's private $HOME.
#
#   scripts/ensure-bigquery-emulator.sh          # install if missing
#   scripts/ensure-bigquery-emulator.sh --check  # exit 0 if installed, 1 if not; installs nothing
#
# Where: $MEDBEAM_BQ_EMULATOR_DIR, else .bq-emulator/ in the repository (git-ignored):
#   venv/                 the emulator's virtual environment (bin/local-bigquery)
#   duckdb-extensions/    v1.5.5/<platform>/*.duckdb_extension, the layout of ~/.duckdb/extensions
# Which Python: $MEDBEAM_BQ_EMULATOR_PYTHON, else the first Python >= 3.13 among pyenv's versions and
# python3.13/python3.14/python3 on PATH.
#
# A failure exits non-zero with CI=true; otherwise it says why and exits 0 (the tests are then skipped,
# saying so).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${MEDBEAM_BQ_EMULATOR_DIR:-$REPO/.bq-emulator}
VENV=$DIR/venv
EXTENSIONS=$DIR/duckdb-extensions
STAMP=$DIR/.installed
DUCKDB_VERSION=1.5.5
EXTENSION_NAMES=(icu json ducklake spatial httpfs parquet avro)
PINS=(local-bigquery==0.3.2 "duckdb==$DUCKDB_VERSION")
for name in "${EXTENSION_NAMES[@]}"; do PINS+=("duckdb-extension-$name==$DUCKDB_VERSION"); done
# One harness patch of the emulator (documented in the patch file and tests/bigquery_emulator.py): a Parquet
# load with a BYTES field in its schema base64-decodes the binary column and fails ("from_base64(BLOB)"),
# where real BigQuery loads Parquet binary into BYTES as it is. medbeam's schema stays as it is.
PATCH=$REPO/scripts/local-bigquery-0.3.2-typed-bytes.patch
WANT="${PINS[*]} patch:$(sha256sum "$PATCH" | cut -c1-16)"

say() { echo "ensure-bigquery-emulator: $*" >&2; }
fail() {
    say "$*"
    if [[ ${CI:-} == true ]]; then exit 1; fi
    say "not installed; the BigQuery emulator tests will be skipped"
    exit 0
}

trap 'fail "failed at line $LINENO: $BASH_COMMAND"' ERR

installed() { [[ -x $VENV/bin/local-bigquery && -d $EXTENSIONS && -f $STAMP && $(<"$STAMP") == "$WANT" ]]; }

if installed; then
    exit 0
fi
if [[ ${1:-} == --check ]]; then
    say "not installed (or not these pins) in $DIR; run scripts/ensure-bigquery-emulator.sh"
    exit 1
fi

find_python() {
    local candidate
    for candidate in ${MEDBEAM_BQ_EMULATOR_PYTHON:-} "${PYENV_ROOT:-${HOME:-}/.pyenv}"/versions/3.1[3-9]*/bin/python \
        "$(command -v python3.13 || true)" "$(command -v python3.14 || true)" "$(command -v python3 || true)"; do
        # pyenv's shims may exist and still refuse to run a version that is not selected: try each one.
        if [[ -n $candidate && -x $candidate ]] &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

started=$SECONDS
PYTHON=$(find_python) || fail "no Python >= 3.13 found (set MEDBEAM_BQ_EMULATOR_PYTHON)"
say "using $PYTHON ($("$PYTHON" -V 2>&1)); installing into $DIR"

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
run() {
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        fail "failed: $*"
    fi
}

# Start from scratch: whatever is there is incomplete or other pins (the stamp is written last).
rm -rf "$VENV" "$EXTENSIONS" "$STAMP"
mkdir -p "$DIR"
run "$PYTHON" -m venv "$VENV"
say "created the venv ($((SECONDS - started)) s); pip install ${PINS[*]}"
run "$VENV/bin/python" -m pip install -q --no-input "${PINS[@]}"
say "installed ($((SECONDS - started)) s)"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
run patch -p1 -d "$SITE" -i "$PATCH"
say "applied $(basename "$PATCH")"

# The extension wheels ship DIR/extensions/v1.5.5/NAME.duckdb_extension; DuckDB looks for
# ~/.duckdb/extensions/v1.5.5/PLATFORM/NAME.duckdb_extension.
PLATFORM=$("$VENV/bin/python" -c 'import duckdb; print(duckdb.sql("PRAGMA platform").fetchone()[0])') ||
    fail "cannot ask DuckDB for its platform"
TARGET=$EXTENSIONS/v$DUCKDB_VERSION/$PLATFORM
mkdir -p "$TARGET"
for name in "${EXTENSION_NAMES[@]}"; do
    file=$SITE/duckdb_extension_$name/extensions/v$DUCKDB_VERSION/$name.duckdb_extension
    [[ -f $file ]] || fail "the wheel duckdb-extension-$name has no $file"
    ln -f "$file" "$TARGET/" 2>/dev/null || cp "$file" "$TARGET/"  # a hard link where possible: 220 MB
done

# Check that DuckDB loads every one of them from there, with downloads off.
run "$VENV/bin/python" - "$EXTENSIONS" "${EXTENSION_NAMES[@]}" <<'EOF'
import sys

import duckdb

con = duckdb.connect(config={"extension_directory": sys.argv[1], "autoinstall_known_extensions": False})
for name in sys.argv[2:]:
    con.execute(f"LOAD {name}")
EOF
say "extensions in $TARGET: ${EXTENSION_NAMES[*]} (all load)"

echo "$WANT" >"$STAMP"
say "ready: $VENV/bin/local-bigquery, $($VENV/bin/python -m pip show local-bigquery 2>/dev/null | sed -n 's/^Version: /local-bigquery /p'), duckdb $DUCKDB_VERSION ($((SECONDS - started)) s)"
