# Sourced by scripts/test and scripts/demo: find Python >= 3.12, make .venv, install.
#
# Order of search: a working python3.13 / python3.12 / python3 on PATH, then a
# pyenv-installed 3.12+ (pyenv's shims fail until a version is selected, so we
# ask pyenv for the interpreter path directly). The virtualenv is reinstalled
# only when pyproject.toml changes. Set-up prints a few lines; pip's own output goes
# to .venv/install.log and is shown only when an install fails.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"

_is_modern_python() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
    local candidate version root
    for candidate in python3.13 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && _is_modern_python "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root)"
        for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.|$)' | sort -t. -k1,1n -k2,2nr -k3,3nr); do
            candidate="$root/versions/$version/bin/python"
            if [ -x "$candidate" ] && _is_modern_python "$candidate"; then
                echo "$candidate"
                return 0
            fi
        done
    fi
    return 1
}

if [ ! -x "$venv/bin/python" ] || ! _is_modern_python "$venv/bin/python"; then
    if ! python_bin="$(find_python)"; then
        echo "error: versionstore needs Python 3.12 or newer." >&2
        echo "Install one (e.g. 'pyenv install 3.12' or your OS package python3.12) and retry." >&2
        exit 1
    fi
    echo "==> creating .venv with $python_bin ($("$python_bin" --version))"
    rm -rf "$venv"
    "$python_bin" -m venv "$venv"
fi

# VS_EXTRAS names the extras to install: scripts/test wants "test" (the default),
# scripts/demo only the package itself ("base"), which any install of this
# pyproject.toml already has.
extras="${VS_EXTRAS:-test}"
hash="$(cat "$repo_root/pyproject.toml" | sha1sum | cut -c1-12)"
stamp="$venv/.installed-$hash-$extras"
if [ "$extras" = "base" ] && compgen -G "$venv/.installed-$hash-*" >/dev/null; then
    stamp="$(compgen -G "$venv/.installed-$hash-*" | head -n 1)"
fi
spec="$repo_root"
[ "$extras" = "base" ] || spec="$repo_root[$extras]"
if [ ! -f "$stamp" ]; then
    # pip talks a lot (and machine-level pip configuration can add a hundred lines of
    # index warnings): keep its output in a log, and show it only if it fails.
    log="$venv/install.log"
    echo "==> installing versionstore ($extras) into .venv (pip's output: .venv/install.log)"
    if ! {
        "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
        "$venv/bin/python" -m pip install --disable-pip-version-check -e "$spec"
    } >"$log" 2>&1; then
        echo "error: installing into .venv failed; pip said:" >&2
        cat "$log" >&2
        exit 1
    fi
    rm -f "$venv"/.installed-*
    touch "$stamp"
    echo "==> .venv is ready"
fi
PYTHON="$venv/bin/python"
export PYTHON
