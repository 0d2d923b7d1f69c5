#!/usr/bin/env bash
# A ComfyUI for the real-ComfyUI tests (tests/comfyui), from the source snapshot beside the repository.
#
#   eval "$(scripts/setup_comfyui.sh)"      # prints COMFYUI_PATH / COMFYUI_PYTHON exports on stdout
#
# Where the snapshot is looked for, first match wins:
#   $COMFYUI_TARBALL; <repo>/../shared/comfyui/ComfyUI-*.tar.gz; /work/shared/comfyui/ComfyUI-*.tar.gz
# Where it goes: $COMFYUI_DIR, default <repo>/.comfyui (git-ignored). An existing checkout there is reused, so
# a second run only checks the installs. Its own venv (<dir>/venv) gets torch==2.14.1 with torchvision==0.29.1
# (the pair ComfyUI starts with on CPU), ComfyUI's requirements without their torch lines, requests, and this
# pack's requirements.txt. For the frontend test: Chromium from the Debian packages when it is missing and
# apt-get can run (as root), and playwright-core from npm into tests/comfyui/node_modules.
#
# Exit status 3 (and nothing on stdout) when no snapshot is found, so a caller can skip instead of failing.
# Progress goes to stderr.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${COMFYUI_DIR:-$REPO/.comfyui}"
say() { echo "setup_comfyui: $*" >&2; }

find_tarball() {
    if [ -n "${COMFYUI_TARBALL:-}" ]; then
        [ -f "$COMFYUI_TARBALL" ] && { echo "$COMFYUI_TARBALL"; return 0; }
        say "COMFYUI_TARBALL=$COMFYUI_TARBALL does not exist"
        return 1
    fi
    local d f
    for d in "$REPO/../shared/comfyui" /work/shared/comfyui; do
        for f in "$d"/ComfyUI-*.tar.gz; do
            [ -f "$f" ] && { echo "$f"; return 0; }
        done
    done
    return 1
}

if [ ! -f "$DIR/main.py" ]; then
    if ! TARBALL="$(find_tarball)"; then
        say "no ComfyUI source snapshot found (set COMFYUI_TARBALL, or put ComfyUI-*.tar.gz in ../shared/comfyui)"
        exit 3
    fi
    say "unpacking $TARBALL into $DIR"
    mkdir -p "$DIR"
    tar -xzf "$TARBALL" -C "$DIR"
fi

PY="$DIR/venv/bin/python"
if [ ! -x "$PY" ]; then
    say "creating $DIR/venv"
    python3 -m venv "$DIR/venv"
fi
if ! "$PY" -c "import torch, torchvision, diffusers, requests, aiohttp" >/dev/null 2>&1; then
    say "installing torch 2.14.1, torchvision 0.29.1, ComfyUI's and the pack's requirements"
    "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1 >&2
    grep -vE '^(torch|torchvision|torchaudio)([<>=!~ ].*)?$' "$DIR/requirements.txt" > "$DIR/requirements-notorch.txt"
    "$PY" -m pip install -q -r "$DIR/requirements-notorch.txt" requests -r "$REPO/requirements.txt" \
        torch==2.14.1 torchvision==0.29.1 >&2
fi

# The frontend test: node (needed, not installed here), Chromium and playwright-core.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing chromium (Debian package)"
        apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; } \
            || say "could not install chromium; the frontend test will say so"
    else
        say "chromium is missing and cannot be installed here (needs apt-get as root); the frontend test will say so"
    fi
fi
if command -v npm >/dev/null 2>&1 && [ ! -d "$REPO/tests/comfyui/node_modules/playwright-core" ]; then
    say "installing playwright-core (npm)"
    npm install --no-save --no-audit --no-fund --prefix "$REPO/tests/comfyui" playwright-core@1 >&2 \
        || say "could not install playwright-core; the frontend test will say so"
fi

echo "export COMFYUI_PATH='$DIR'"
echo "export COMFYUI_PYTHON='$PY'"
