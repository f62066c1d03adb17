"""Every method's losses and training state, step by step, against values recorded before a refactor.

`tests/golden/steps.json` holds, for each method, the loss and stats of six training steps of the real loop
(fixed in-memory images, fixed seed, one thread) and a sha256 of every tensor of the state after them: the
student, its BatchNorm statistics, the queue, the SGD momentum, and the teacher as the next step would use it.
It was written by `python tests/test_golden_steps.py` on the code before the step contract was made explicit;
a change that moves any loss or weight by one bit fails here. Float summation order depends on the CPU's
vector width and the torch build, so the file holds one recording per platform (torch version and CPU
capability; `python tests/test_golden_steps.py` adds this machine's, from the code as it is) and the bits are
compared where this platform has one. Elsewhere only the first step's loss is compared (to 1e-4): after an SGD
step at this learning rate rounding differences grow past any fixed tolerance.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "steps.json"

CASES = {
    "isd": {"method": "isd"},
    "isd-plus": {"method": "isd-plus", "temp": 0.1, "temp_t": 0.05, "augmentation": "weak/strong"},
    "byol": {"method": "byol"},
    "moco": {"method": "moco", "temp": 0.2},
    "supervised": {"method": "supervised"},
    "isd-bf16": {"method": "isd", "amp": "bf16"},
}
COMMON = {"width": 8, "stem": "small", "batch_size": 4, "queue_size": 8, "num_workers": 0, "device": "cpu",
          "amp": "off", "channels_last": "off", "print_freq": 1, "epochs": 2, "ema": 0.9, "lr": 0.05, "seed": 7,
          "data": "unused"}  # amp and layout as the recording's "auto" meant on a CPU then


def memory_source(*_args, **_kwargs):
    from isd.data.sources import IMAGENET_MEAN, IMAGENET_STD, Source

    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=g)
    return Source("golden", ["a", "b", "c"], torch.tensor([0, 1, 2] * 4), IMAGENET_MEAN, IMAGENET_STD,
                  native_size=16, images=images)


def platform() -> str:
    return f"torch {torch.__version__.split('+')[0]}, cpu {torch.backends.cpu.get_cpu_capability()}"


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode() + raw.numpy().tobytes()).hexdigest()[:24]


def run_case(name: str, run_dir: Path, patch) -> dict:
    """Six steps of the real loop; the per-step logged values and the state's digests."""
    import isd.train.loop as loop
    from isd.config import build_config

    patch(loop, "load_source", memory_source)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setup = loop.train(build_config(None, {**COMMON, **CASES[name], "run_dir": str(run_dir)}), log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [{k: v for k, v in r.items() if k not in ("time", "images_per_s", "data_wait", "epoch", "lr", "kind")}
             for r in rows if r["kind"] == "train"]
    state = {k: digest(v) for k, v in setup.model.state_dict().items()}  # the teacher as the next step uses it
    momentum = [digest(s["momentum_buffer"]) for s in setup.optimizer.state_dict()["state"].values()]
    return {"steps": steps, "state": state, "sgd_momentum": momentum}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name, one_batch", [*((name, False) for name in CASES), ("isd", True), ("byol", True)])
def test_losses_and_state_are_the_recorded_ones(name, one_batch, golden, tmp_path, monkeypatch):
    """`one_batch`: both views of the (one) recipe made as one batch, as on a GPU: the same bits."""
    import isd.data.batches as data_batches

    monkeypatch.setattr(data_batches, "both_views_as_one_batch", lambda device: one_batch)
    recorded = golden["platforms"]
    got = run_case(name, tmp_path, monkeypatch.setattr)
    assert [s["step"] for s in got["steps"]] == [1, 2, 3, 4, 5, 6]
    if platform() not in recorded:
        for cases in recorded.values():
            want, have = cases[name]["steps"][0]["loss"], got["steps"][0]["loss"]
            assert have == pytest.approx(want, rel=1e-4, abs=1e-6), name
        return
    expected = recorded[platform()][name]
    assert got["steps"] == expected["steps"]  # every logged float, to the bit
    different = sorted(k for k in expected["state"] if got["state"].get(k) != expected["state"][k])
    assert not different and got["state"].keys() == expected["state"].keys(), different[:8]
    assert got["sgd_momentum"] == expected["sgd_momentum"]


def record() -> None:
    import tempfile

    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            cases[name] = run_case(name, Path(tmp) / name, setattr)
            print(name, [round(s["loss"], 5) for s in cases[name]["steps"]])
    GOLDEN.parent.mkdir(exist_ok=True)
    platforms = json.loads(GOLDEN.read_text())["platforms"] if GOLDEN.is_file() else {}
    platforms[platform()] = cases
    GOLDEN.write_text(json.dumps({"platforms": platforms}, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))
    record()
