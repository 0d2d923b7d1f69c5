#!/usr/bin/env bash
# The README's screenshot: the demo-model paper workflow after a run in ComfyUI's real frontend, taken by the
# real-browser test (tests/comfyui/test_comfyui_server.py::test_real_frontend_loads_every_workflow_and_runs_two).
#
#   scripts/make_screenshot.sh        # from the repository root, with the pack's .venv active
#
# Needs what the real-ComfyUI tests need (scripts/setup_comfyui.sh sets it up); writes docs/screenshot_workflow.jpg.
set -euo pipefail
cd "$(dirname "$0")/.."
env="$(scripts/setup_comfyui.sh)" || { echo "make_screenshot: no ComfyUI for the real-browser test" >&2; exit 1; }
eval "$env"
out="$(mktemp -d)"
# CI=true: a missing browser fails the test instead of skipping it
CI=true PCDMS_TEST_OUTPUT="$out" python -m pytest -q -p no:cacheprovider tests/comfyui/test_comfyui_server.py \
    -k real_frontend
shot="$out/frontend/PCDMs - paper, three stages (demo models).png"
[ -f "$shot" ] || { echo "make_screenshot: the test wrote no $shot" >&2; exit 1; }
python - "$shot" docs/screenshot_workflow.jpg <<'PY'
import sys

from PIL import Image

shot = Image.open(sys.argv[1]).convert("RGB")
shot.resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.LANCZOS).save(sys.argv[2], quality=85)
print(sys.argv[2])
PY
