"""One CompRess step of the original code and of isd (`isd.Distill`), side by side in float64, for 1q and 2q.

The original (UMBCvision/CompRess, `--original`, default ../shared/reference/original-compress) runs as a separate
process: a driver written to a temporary folder imports its `models/resnet.py`, `nn/compress_loss.py` and
`train_student.py`'s `moment_update`, builds what `train_student.py` (2q) or `train_student_one_queue.py` (1q)
builds (a ResNet-18 teacher, a ResNet-18 student with its key encoder or its linear head, the loss module with its
queues), saves the initial weights, queues and images, then takes STEPS steps as their `train_student` loop does
(teacher forward, student forward, key forward, loss, SGD step, momentum update) and saves every loss and the
final state. isd then loads those initial values into `isd.Distill`, takes the same steps through its step
contract (`forward`, `optimizer.step()`, `apply_step`), and the two are compared.

Patches applied to the original at run time (listed in the output): `.cuda()` of tensors and modules is a no-op
(no GPU here), and the default dtype is float64. Nothing of the original is imported by isd or copied into it.

    python benchmarks/compress_fidelity.py --out benchmarks/results/compress_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from isd.experiments.provenance import code_version  # noqa: E402
from isd.methods import Distill  # noqa: E402
from isd.nets import build_backbone  # noqa: E402

PATCHES = ["torch.Tensor.cuda and torch.nn.Module.cuda return self (no GPU)",
           "torch.set_default_dtype(torch.float64) before the models are built"]
STEPS, BATCH, QUEUE, TEMP, ALPHA, LR = 3, 4, 8, 0.04, 0.9, 0.01  # a queue of 2 batches: step 3 reuses step 1's rows

DRIVER = textwrap.dedent('''
    import sys, torch
    from torch import nn
    original, variant, out = sys.argv[1], sys.argv[2], sys.argv[3]
    STEPS, BATCH, QUEUE, TEMP, ALPHA, LR = {constants}
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.set_default_dtype(torch.float64)
    sys.path.insert(0, original)
    from models.resnet import resnet18
    from nn.compress_loss import CompReSSA, CompReSSMomentum, Teacher
    from train_student import moment_update

    torch.manual_seed(0)
    teacher_net = resnet18(); teacher_net.fc = nn.Sequential()
    for p in teacher_net.parameters():
        p.requires_grad = False
    teacher = Teacher(cached=False, model=teacher_net)
    teacher.eval()
    student = resnet18(); student.fc = nn.Sequential()
    if variant == "2q":
        student_key = resnet18(); student_key.fc = nn.Sequential()
        compress = CompReSSMomentum(512, 512, QUEUE, TEMP)
        moment_update(student, student_key, 0)
    else:
        student.fc = nn.Linear(512, 512)
        compress = CompReSSA(512, QUEUE, TEMP)
    images = torch.randn(STEPS, BATCH, 3, 224, 224)
    initial = {{"teacher": {{k: v.clone() for k, v in teacher_net.state_dict().items()}},
               "student": {{k: v.clone() for k, v in student.state_dict().items()}},
               "memory": {{k: v.clone() for k, v in compress.state_dict().items()}}, "images": images}}
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    student.train()
    if variant == "2q":
        student_key.eval()
        student_key.apply(lambda m: m.train() if "BatchNorm" in m.__class__.__name__ else None)
    losses = []
    for step in range(STEPS):
        x = images[step]
        teacher_feats = teacher.forward(x, None)
        student_feats = student(x)
        if variant == "2q":
            with torch.no_grad():
                key_feats = student_key(x).detach()
            loss = compress(teacher_feats, student_feats, key_feats)
        else:
            loss = compress(teacher_feats, student_feats)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        if variant == "2q":
            moment_update(student, student_key, ALPHA)
        losses.append(loss.item())
    final = {{"student": student.state_dict(), "memory": compress.state_dict(), "losses": losses}}
    if variant == "2q":
        final["student_key"] = student_key.state_dict()
    torch.save({{"initial": initial, "final": final}}, out)
''')


def run_original(original: Path, variant: str, folder: Path) -> dict:
    driver, out = folder / "driver.py", folder / f"original_{variant}.pt"
    driver.write_text(DRIVER.format(constants=(STEPS, BATCH, QUEUE, TEMP, ALPHA, LR)))
    done = subprocess.run([sys.executable, str(driver), str(original.resolve()), variant, str(out)],
                          capture_output=True, text=True, cwd=folder)
    if done.returncode:
        raise SystemExit(f"the original's step failed:\n{done.stderr[-3000:]}")
    return torch.load(out, weights_only=True)


def run_isd(recorded: dict, variant: str) -> dict:
    initial = recorded["initial"]
    teacher = build_backbone("resnet18").double()
    teacher.load_state_dict(initial["teacher"])
    student = build_backbone("resnet18")
    model = Distill(student, teacher, variant=variant, queue_size=QUEUE, temp=TEMP, ema=ALPHA).double()
    student_state = {k: v for k, v in initial["student"].items() if variant == "1q" or not k.startswith("fc.")}
    model.encoder_q.load_state_dict(student_state)
    if variant == "2q":
        model.encoder_k.load_state_dict(student_state)  # moment_update(student, student_key, 0): a copy
    memory = initial["memory"]
    with torch.no_grad():
        if variant == "2q":
            model.queue.queue.copy_(torch.cat([memory["teacher_sample_similarities.memory"],
                                               memory["student_sample_similarities.memory"]], dim=1))
        else:
            model.queue.queue.copy_(memory["teacher_sample_similarities.memory"])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9,
                                weight_decay=1e-4)
    model.train()
    losses = []
    for step in range(STEPS):
        x = initial["images"][step]
        loss, _, after = model(x, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.apply_step(after)
        losses.append(loss.item())
    return {"model": model, "losses": losses}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.numel() else 0.0


def compare(recorded: dict, ours: dict, variant: str) -> dict:
    final, model = recorded["final"], ours["model"]
    student = {k: v for k, v in model.encoder_q.state_dict().items() if variant == "1q" or not k.startswith("fc.")}
    worst = {"student": max(relative(student[k], v) for k, v in final["student"].items() if v.is_floating_point())}
    if variant == "2q":
        key = model.encoder_k.state_dict()
        worst["student_key"] = max(relative(key[k], v) for k, v in final["student_key"].items()
                                   if v.is_floating_point())
        queue = torch.cat([final["memory"]["teacher_sample_similarities.memory"],
                           final["memory"]["student_sample_similarities.memory"]], dim=1)
    else:
        queue = final["memory"]["teacher_sample_similarities.memory"]
    worst["queue"] = relative(model.queue.queue, queue)
    worst["loss"] = max(abs(a - b) / abs(b) for a, b in zip(ours["losses"], final["losses"]))
    return {"variant": variant, "steps": STEPS, "losses_original": final["losses"], "losses_isd": ours["losses"],
            "max_relative_difference": worst, "equal_to_float64_rounding": max(worst.values()) < 1e-9}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", default=str(ROOT.parent / "shared" / "reference" / "original-compress"),
                        help="a clone of UMBCvision/CompRess (default ../shared/reference/original-compress)")
    parser.add_argument("--out", help="write the comparison here as JSON")
    args = parser.parse_args()
    original = Path(args.original)
    if not (original / "nn" / "compress_loss.py").is_file():
        raise SystemExit(f"--original {original}: no nn/compress_loss.py there (a clone of UMBCvision/CompRess)")
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory(prefix="compress_fidelity_") as tmp:
        for variant in ("2q", "1q"):
            recorded = run_original(original, variant, Path(tmp))
            results.append(compare(recorded, run_isd(recorded, variant), variant))
            r = results[-1]
            print(f"{variant}: losses original {r['losses_original']}, isd {r['losses_isd']}; max relative "
                  f"difference {max(r['max_relative_difference'].values()):.1e} "
                  f"({'equal' if r['equal_to_float64_rounding'] else 'DIFFERENT'})")
    report = {"benchmark": "compress_fidelity", "what": "CompRess steps of the original code and of isd.Distill in "
              "float64 (ResNet-18 teacher and student at 224 px, batch 4, queue 8, T 0.04, SGD lr 0.01)",
              "original": str(original), "original_commit": (original / "COMMIT").read_text().strip()
              if (original / "COMMIT").is_file() else None, "patches": PATCHES, "results": results,
              **code_version(), "torch": torch.__version__, "machine": platform.processor() or
              platform.machine(), "command": "python " + " ".join(sys.argv)}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0 if all(r["equal_to_float64_rounding"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
