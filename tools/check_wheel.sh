#!/usr/bin/env bash
# `make check-wheel`: build the sdist and the wheel, install the wheel into a fresh virtual environment outside
# the source tree, and run what a user runs first: `isd --version`, `isd recipes`, `isd experiment --list`, one
# epoch of `isd train` on a tiny folder, `isd knn` on its checkpoint, and the API example.
# The fresh environment takes torch and the other dependencies from the project's .venv (a .pth line; its own
# site-packages hold only the wheel), so the check needs no download and proves the wheel is what `import isd`
# finds: the package's files, recipes and plans must all come from the wheel.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PY" -m build --sdist --wheel --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/*.whl)
SDIST=$(ls "$WORK"/dist/*.tar.gz)
for archive in "$WHEEL" "$SDIST"; do
  "$PY" - "$archive" <<'PY'
import sys, tarfile, zipfile
path = sys.argv[1]
names = zipfile.ZipFile(path).namelist() if path.endswith(".whl") else tarfile.open(path).getnames()
need = ["isd/recipes/isd-r18-imagenet.yaml", "isd/plans/fmnist-balanced.yaml", "isd/py.typed", "isd/cli/main.py", "isd/losses.py"]
missing = [n for n in need if not any(name.endswith(n) for name in names)]
assert not missing, f"{path} lacks {missing}"
print(f"{path.rsplit('/', 1)[1]}: {len(names)} files, recipes and plans included")
PY
done

"$PY" -m venv "$WORK/env"
SITE=$("$WORK/env/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
DEPS=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$DEPS" > "$SITE/project_dependencies.pth"
"$WORK/env/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"

cd "$WORK"   # outside the source tree
ISD="$WORK/env/bin/isd"
"$WORK/env/bin/python" - "$SITE" <<'PY'
import sys, isd
assert isd.__file__.startswith(sys.argv[1]), f"isd imported from {isd.__file__}, not from the wheel"
print(f"import isd: {isd.__file__}")
PY
"$ISD" --version
"$ISD" recipes > recipes.txt && grep -q "isd-r18-imagenet" recipes.txt && echo "isd recipes: $(wc -l < recipes.txt) lines"
"$ISD" experiment --list > plans.txt && grep -q "fmnist-balanced" plans.txt && echo "isd experiment --list: ok"
"$WORK/env/bin/python" - <<'PY'
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 8), ("val", 4)):
    for c in range(2):
        folder = Path("tiny", split, f"class{c}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
PY
OMP_NUM_THREADS=1 "$ISD" train tiny --epochs 1 --batch-size 4 --queue-size 16 --num-workers 0 --device cpu \
  --set width=8 --set image_size=32 --run-dir run > train.log 2>&1 || { tail -20 train.log; exit 1; }
test -f run/ckpt_last.pth
OMP_NUM_THREADS=1 "$ISD" knn run/ckpt_last.pth tiny --num-workers 0 > knn.log 2>&1 || { tail -20 knn.log; exit 1; }
grep -q "top-1" knn.log && test -f run/knn.json
OMP_NUM_THREADS=1 "$WORK/env/bin/python" "$ROOT/examples/own_loop.py" --steps 2
echo "check-wheel: the wheel installs and runs outside the source tree"
