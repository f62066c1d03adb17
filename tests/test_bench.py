"""`isd bench`: the three modes run the real step, FLOPs per image are the step's, MFU uses the chip's peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from isd.cli.main import main
from isd.config import build_config
from isd.data.synthetic import jpeg_folder
from isd.methods import method_from_config
from isd.train import bench as bench_module

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_synthetic_folder_has_photo_sized_jpegs_and_is_reused(tmp_path):
    jpeg_folder(tmp_path, 6, classes=3, size=(50, 40))
    files = sorted((tmp_path / "train").rglob("*.JPEG"))
    assert len(files) == 6 and len({f.parent for f in files}) == 3
    with Image.open(files[0]) as img:
        assert img.size == (50, 40) and img.format == "JPEG"
    stamp = files[0].stat().st_mtime_ns
    jpeg_folder(tmp_path, 6, classes=3, size=(50, 40))
    assert files[0].stat().st_mtime_ns == stamp


def tiny_bench(out: Path, *extra: str, steps: int = 2, warmup: int = 1, images: int = 32) -> list[str]:
    """`isd bench` of a width-8 ResNet-18 on 32 px crops of a small synthetic folder, on the CPU, into `out`."""
    return ["bench", "--set", "width=8", "--size", "32", "--batch", "8", "--steps", str(steps), "--warmup",
            str(warmup), "--synthetic-images", str(images), "--set", "num_workers=0", "--device", "cpu", *extra,
            "--out", str(out)]


def test_bench_counts_the_steps_flops_and_writes_every_mode(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = tiny_bench(out, "--set", "amp=off", "--set", "channels_last=off")
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["torch"] == torch.__version__ and result["device"].startswith("CPU")
    (row,) = result["results"]
    assert [r["mode"] for r in row["rows"]] == ["compute", "data", "e2e"]
    assert all(r["images_per_s"] > 0 and r["steps"] == 2 and r["batch"] == 8 for r in row["rows"])
    assert all(r["mfu"] is None for r in row["rows"] if r["mode"] != "data")  # no peak for a CPU
    # the step's FLOPs: student forward + backward (about 3 forwards) and the teacher's forward, per image
    cfg = build_config(None, {"width": 8, "data": "x", "image_size": 32, "batch_size": 8, "queue_size": 16})
    net = method_from_config(cfg, in_channels=3, stem="small").encoder_q.eval()  # auto: 3x3 stem below 64 px
    with FlopCounterMode(display=False) as one:
        net(torch.randn(2, 3, 32, 32))
    assert 3.5 < row["gflops_per_image"] * 1e9 / (one.get_total_flops() / 2) < 4.5
    printed = capsys.readouterr().out
    assert "compute" in printed and "e2e" in printed and f"wrote {out}" in printed
    assert "timed for only" in printed and "raise --steps" in printed  # 2 steps on a CPU: not the steady state
    # the committed file becomes a table of `isd report` (and so a checked README block)
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    e2e = next(r for r in row["rows"] if r["mode"] == "e2e")
    assert row["pipeline"] == "workers" and row["compile"] == "off" and row["first_step_seconds"] > 0  # CPU: auto
    assert row["stem"] == "small"  # auto below 64 px, so the table does not name it
    assert f"| isd | resnet18 (width 8) | 32 | 8 | fp32 | workers | off | e2e | {e2e['images_per_s']:,.1f} |" in table
    assert result["device"] in table and torch.__version__ in table


def test_vary_adds_a_dimension_per_key(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = tiny_bench(out, "--modes", "compute", "--vary", "amp=off,bf16", "--vary", "channels_last=off,on",
                      steps=1, warmup=0, images=16)
    assert main(argv) == 0
    got = [(r["precision"], r["channels_last"]) for r in json.loads(out.read_text())["results"]]
    assert got == [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    assert main(["bench", "--vary", "amp", "--device", "cpu"]) == 2
    assert "--vary expects KEY=V1,V2" in capsys.readouterr().err


def test_a_net_with_an_unusual_stem_for_its_image_size_says_so_in_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(tiny_bench(out, "--modes", "compute", "--set", "stem=imagenet", steps=1, warmup=0, images=16)) == 0
    assert json.loads(out.read_text())["results"][0]["stem"] == "imagenet"
    assert main(["report", str(out)]) == 0
    assert "| isd | resnet18 (width 8, imagenet stem) | 32 | 8 |" in capsys.readouterr().out


def test_bench_measures_the_device_pipeline_of_a_folder(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = tiny_bench(out, "--set", "data_pipeline=device", "--modes", "data")
    assert main(argv) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["pipeline"] == "device" and row["rows"][0]["mode"] == "data" and row["rows"][0]["images_per_s"] > 0
    assert " device " in capsys.readouterr().out


def test_report_renders_a_side_by_side_file_with_its_ratio_and_setup(tmp_path, capsys):
    run = {"script": "train_isd.py", "original": {"images_per_s": 8.87, "runs": [{"images_per_s": 8.87}]},
           "ratio": 1.712, "isd": {"images_per_s": 15.19, "runs": [{"images_per_s": 15.19}],
                                   "extra_flags": ["--amp", "bf16"]}}
    data = {"commit": "abc", "dirty": False, "torch": "2.x", "device": "CPU (2 cores)", "command": "vs_original.py",
            "setup": {"images": 320, "image_size": [500, 375], "batch": 32, "workers": 2, "arch": "resnet18",
                      "measured": "the second epoch"}, "runs": [run]}
    path = tmp_path / "vs.json"
    path.write_text(json.dumps(data))
    assert main(["report", str(path)]) == 0
    table = capsys.readouterr().out
    assert "| train_isd.py | 8.87 | 15.19 | 1.71× | 8.87; 15.19 | `--amp bf16` |" in table
    assert "320 JPEGs of 500×375 px, batch 32, 2 workers" in table and "CPU (2 cores)" in table


def test_report_renders_the_operations_per_step_by_phase(tmp_path, capsys):
    phases = {"views": {"ops": 330, "host_round_trips": 0}, "forward+loss+backward": {"ops": 437},
              "optimizer": {"ops": 262}, "teacher+queue": {"ops": 5}}
    row = {"recipe": "isd-r18-fmnist", "method": "isd", "arch": "resnet18", "image_size": 28, "channels": 1,
           "batch": 256, "pipeline": "memory", "total_ops": 1034, "phases": phases}
    data = {"commit": "abc", "dirty": False, "torch": "2.x", "device": "CPU (2 cores)", "command": "step_ops.py",
            "results": [row]}
    path = tmp_path / "ops.json"
    path.write_text(json.dumps(data))
    assert main(["report", str(path)]) == 0
    table = capsys.readouterr().out
    assert "| isd-r18-fmnist, batch 256 | 28 px × 1 | memory | 330 (0) | 437 | 262 | 5 | 1,034 |" in table


def test_step_ops_counts_each_phase_of_a_real_step(image_root):
    """benchmarks/step_ops.py on a tiny folder: every phase of the step is counted, and nothing twice."""
    import importlib.util

    from conftest import ROOT, single_thread, tiny_values

    spec = importlib.util.spec_from_file_location("step_ops", ROOT / "benchmarks" / "step_ops.py")
    step_ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_ops)
    values = tiny_values(image_root, image_root / "unused", data_pipeline="device", amp="off")
    with single_thread():
        row = step_ops.count_step({k: v for k, v in values.items() if k != "run_dir"})
    ops = {name: phase["ops"] for name, phase in row["phases"].items()}
    assert set(ops) == {"views", "forward+loss+backward", "optimizer", "teacher+queue"}
    assert all(n > 0 for n in ops.values()) and row["total_ops"] == sum(ops.values())
    assert row["pipeline"] == "device" and row["phases"]["teacher+queue"]["most"].get("_foreach_mul_") == 1
    assert row["phases"]["optimizer"]["host_round_trips"] == 0


def test_profile_writes_an_operator_table_per_setting(tmp_path, capfd):
    out, tables = tmp_path / "bench.json", tmp_path / "profiles"
    argv = tiny_bench(out, "--modes", "compute", "--vary", "amp=off,bf16", "--profile", str(tables), warmup=0,
                      images=16)
    assert main(argv) == 0
    results = json.loads(out.read_text())["results"]
    files = sorted(tables.glob("*.txt"))
    assert [Path(r["profile"]["file"]).name for r in results] == [f.name for f in files] and len(files) == 2
    assert all(r["profile"]["steps"] == 2 and r["profile"]["wall_ms_per_step"] > 0 for r in results)
    assert "aten::convolution_backward" in files[0].read_text() and "Self CPU" in files[0].read_text()
    printed = capfd.readouterr()  # the profiler's own log lines are written by C++, to the file descriptor
    assert "profile: " in printed.out and "ERROR" not in printed.err and "USDT" not in printed.err


def test_mfu_peak_is_the_chips_data_sheet_figure(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert bench_module.peak_flops(torch.device("cuda"), bf16=True) == 989e12
    assert bench_module.peak_flops(torch.device("cuda"), bf16=False) == 67e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some Unknown GPU")
    assert bench_module.peak_flops(torch.device("cuda"), bf16=True) is None
    assert bench_module.peak_flops(torch.device("cpu"), bf16=True) is None


@pytest.mark.parametrize("argv, message", [
    (["bench", "--steps", "0"], "--steps must be in"),
    (["bench", "--out", "/no/such/folder/b.json"], "its folder does not exist"),
    (["bench", "--batch", "1"], "batch"),
    (["bench", "--profile", "/dev/null/profiles"], "--profile /dev/null/profiles: the folder cannot be made"),
])
def test_bench_refuses_bad_values_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.parametrize("content, message", [("{not json", "is not a readable JSON file"),
                                              ('{"rows": []}', "not a result of `isd bench --out`"),
                                              ("[1, 2]", "not a result of `isd bench --out`"),
                                              ('{"results": [{"variant": "2q"}]}', "not a result of `isd bench"),
                                              ('{"results": []}', "not a result of `isd bench --out`")])
def test_report_refuses_a_json_file_that_is_no_speed_result_in_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text(content)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err


def test_report_renders_the_committed_fidelity_result_as_a_table(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "compress_fidelity.json"
    assert main(["report", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| 1q") or line.startswith("| 2q")}
    assert set(rows) == {"1q", "2q"}
    assert all(row.rstrip().endswith("| yes |") for row in rows.values())


def test_bench_says_nothing_of_short_runs_once_every_mode_ran_a_minute(tmp_path, capsys, monkeypatch):
    def long_enough(cfg, modes, steps, warmup, table):
        row = {"mode": "e2e", "images_per_s": 100.0, "seconds": 61.0, "steps": steps, "batch": cfg.batch_size}
        return {"precision": "fp32", "channels_last": False, "image_size": 32, "pipeline": "workers",
                "first_step_seconds": 0.1, "rows": [row]}

    monkeypatch.setattr("isd.cli.bench.bench", long_enough)
    assert main(tiny_bench(tmp_path / "bench.json", "--modes", "e2e", images=16)) == 0
    assert "timed for only" not in capsys.readouterr().out
