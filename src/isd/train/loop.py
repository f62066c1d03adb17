"""The training loop. It knows nothing of the method it runs, nor of where the images come from."""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from isd import checkpoint as ck
from isd.config import Config, save_yaml
from isd.data.batches import TwoViewLoader, batches_of
from isd.data.sources import Source, load_source
from isd.data.splits import training_images
from isd.errors import Preempted, SettingError
from isd.methods import Distill, Method, method_from_config
from isd.nets.backbones import auto_stem
from isd.runtime import init_distributed, leave_distributed, resolve_device
from isd.train.nonfinite import NonFiniteGuard
from isd.train.preemption import StopRequests
from isd.train.runlog import RunLog
from isd.train.schedule import learning_rate
from isd.train.teacher_cache import CachedKeys, cached_teacher_features


@dataclass
class Setup:
    """Everything a run needs, built and checked before the first step."""
    cfg: Config
    device: torch.device
    rank: int
    world: int
    run_dir: Path
    source: Source
    size: int
    model: Method
    optimizer: torch.optim.Optimizer
    start_epoch: int = 1
    start_step: int = 0
    joined_group: bool = False  # build() joined the process group, so train() leaves it
    key_table: torch.Tensor | None = None  # distillation with a cached teacher: its features of each image


def prepare_run_dir(path: str) -> Path:
    run_dir = Path(path)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test.{os.getpid()}"  # one per process: ranks share the run folder
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SettingError("run folder {path} is not writable ({why}); pass a writable {run_dir}", path=run_dir,
                           why=err.strerror) from None
    return run_dir


def image_size_and_stem(cfg: Config, source: Source) -> tuple[int, str]:
    size = cfg.image_size or source.native_size or 224
    stem = cfg.stem if cfg.stem != "auto" else auto_stem(size)
    return size, stem


def build(cfg: Config, log: Callable[[str], None] = print, trust_code: bool = False) -> Setup:
    device = resolve_device(cfg.device)
    if warning := slow_bf16_warning(cfg, device):
        log(warning)
    rank, world, joined = init_distributed(device)
    if cfg.batch_size % world:
        raise SettingError("{batch_size} {batch} (global) must be divisible by the {world} processes",
                           batch=cfg.batch_size, world=world)
    run_dir = prepare_run_dir(cfg.run_dir)
    source = training_images(load_source(cfg.dataset, cfg.data, "train", cfg.subset_file, in_memory=cfg.in_memory,
                                         download=cfg.download), cfg)
    if source.bad_files and rank == 0:
        report_undecodable(run_dir, source, cfg.max_bad_fraction, log)
    if len(source) < cfg.batch_size:
        raise SettingError("{batch_size} {batch} is larger than the dataset ({n} images in {name}); use {batch_size} "
                           "{fit} or more data", batch=cfg.batch_size, n=len(source), name=source.name,
                           fit=max(2, len(source) // 2))
    size, stem = image_size_and_stem(cfg, source)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = method_from_config(cfg, in_channels=source.channels, stem=stem, num_classes=len(source.classes),
                               trust_code=trust_code)
    key_table = None
    if isinstance(model, Distill) and cfg.teacher_cache:
        key_table = cached_teacher_features(cfg, run_dir, model.teacher.to(device), source, size, device, log,
                                            rank == 0)
        model.teacher = torch.nn.Identity()  # the key view is now the cached feature vector of each image
    if cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if device.type == "cpu" and any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()):
            raise SettingError("{sync_bn}=true needs CUDA GPUs (torch's SyncBatchNorm has no CPU kernel); "
                               "leave it off for CPU runs")
    model = model.to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile != "off":
        compile_networks(model, cfg.compile)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay,
                                fused=use_fused_sgd(device) or None)
    setup = Setup(cfg, device, rank, world, run_dir, source, size, model, optimizer, joined_group=joined,
                  key_table=key_table)
    if resume(setup, log, trust_code):
        model.catch_up_teacher()  # the teacher update the original makes before its resumed step (a new one made it)
    return setup


def training_loader(setup: Setup) -> TwoViewLoader:
    """The run's two views of each batch (the key being the cached teacher feature vector where there is one)."""
    loader = batches_of(setup.source).two_views(setup.cfg, setup.size, setup.device, setup.rank, setup.world)
    return loader if setup.key_table is None else CachedKeys(loader, setup.key_table)


def compile_networks(model: torch.nn.Module, mode: str, backend: str = "inductor") -> None:
    """torch.compile each network of the method in place (student, predictor, teacher; their state_dict keys and
    checkpoints stay as they are). Losses, the queue and the teacher update stay eager: the step contract, the
    non-finite guard and shuffle-BN's collectives are unchanged. The first steps compile (minutes). The views'
    pixel work is compiled by the loaders (`view_augments`)."""
    for child in model.children():
        if any(True for _ in child.parameters()):
            child.compile(mode=None if mode == "default" else mode, backend=backend)


def use_fused_sgd(device: torch.device) -> bool:
    """On a GPU, SGD's fused kernel: one launch for every parameter instead of a few per group of tensors (a
    small-image step is bound by launches). Not on a CPU: there the fused kernel rounds the tail of small tensors
    differently from the per-tensor loop (golden steps) and saves ~5 ms a step."""
    return device.type == "cuda" and fused_sgd_kernel_works(device)


@functools.cache
def fused_sgd_kernel_works(device: torch.device) -> bool:
    """Whether this torch has SGD's fused kernel for the device; tried once on a one-element tensor, as older
    versions lack the kernel or the keyword."""
    try:
        p = torch.zeros(1, device=device, requires_grad=True)
        p.grad = torch.ones(1, device=device)
        torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True).step()
        return True
    except (TypeError, RuntimeError):
        return False


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """auto: on, on a GPU and on a CPU alike: on this project's CPU measurements it is as fast or faster in every
    case (ResNet-18 at 224 px +17% in fp32 and +24% in bf16; 28 px +32% in fp32, level in bf16; docs/results.md)."""
    return cfg.channels_last != "off"


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """amp auto: bf16 on a GPU, and on a CPU with native bf16, where it trains about twice as fast as fp32 and
    as well (benchmarks/plans/fmnist-cpu-bf16.yaml: kNN within the seeds' spread of fp32's)."""
    if cfg.amp != "auto":
        return cfg.amp == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them torch runs bf16 convolutions on slow fallback kernels."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def slow_bf16_warning(cfg: Config, device: torch.device) -> str | None:
    if device.type != "cpu" or not use_bf16(cfg, device) or cpu_has_native_bf16():
        return None
    # benchmarks/results/cpu_bf16.json: ResNet-18 forward+backward at 224 px, 0.51 img/s in bf16 and 7.04 in fp32
    # on a 2-core AVX2 EPYC (torch 2.14)
    return ("warning: amp=bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX): about 15x slower than fp32 "
            "here; use amp=off (--set amp=off, or --amp off for the original commands)")


def resume(setup: Setup, log: Callable[[str], None], trust_code: bool = False) -> bool:
    """Continue from `--resume`: a checkpoint of ours or of the original scripts (their keys are mapped onto
    ours; their queue, pointer and optimizer state are restored as the original's own --resume did). True when
    the loaded teacher owes an update (the original's checkpoints, `isd-ssl/1`); False when it is up to date (our
    current format) or nothing was loaded."""
    cfg = setup.cfg
    if not cfg.resume:
        return False
    if cfg.resume == "auto":
        found = ck.load_latest(setup.run_dir, warn=log, steps_per_epoch=len(setup.source) // cfg.batch_size,
                               trust_code=trust_code)
        if found is None:
            log(f"resume auto: no checkpoint in {setup.run_dir} yet, starting from scratch")
            return False
        path, state = found
    else:
        path, state = Path(cfg.resume), ck.read_for_resume(cfg.resume, trust_code)
    ck.check_compatible(state, cfg, path)
    if "optimizer" not in state or "epoch" not in state:
        raise SettingError("checkpoint {path} has no optimizer state: it is not a training checkpoint of `isd train` "
                           "(evaluate it with `isd knn` / `isd linear`, or start a new run without {resume})",
                           path=path)
    try:
        setup.model.load_state_dict(ck.our_layout(ck.raw_model_state(state)))
    except (RuntimeError, AttributeError) as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        first = first if len(first) <= 300 else first[:300] + "..."
        raise SettingError("checkpoint {path} does not fit this model ({first}); check {arch}, {queue_size} and "
                           "the method's heads", path=path, first=first) from None
    kernel = [(group.get("fused"), group.get("foreach")) for group in setup.optimizer.param_groups]
    try:
        setup.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError) as err:
        raise SettingError("checkpoint {path}: its optimizer state does not fit this model's parameters ({why}); "
                           "check {method} and {arch}", path=path, why=ck.failure_reason(err)) from None
    for group, (fused, foreach) in zip(setup.optimizer.param_groups, kernel):
        group["fused"], group["foreach"] = fused, foreach  # this machine's kernel, not the one that saved the state
    if "rng" in state:
        ck.restore_rng(state["rng"])
    steps_done = int(state.get("step_in_epoch", 0))
    setup.start_epoch = int(state["epoch"]) + (0 if steps_done else 1)
    setup.start_step = steps_done
    log(f"resumed from {path}: epoch {state['epoch']}" + (f", step {steps_done}" if steps_done else ""))
    return not ck.teacher_is_current(state)


def train(cfg: Config, log: Callable[[str], None] = print, on_epoch_end: Callable | None = None,
          trust_code: bool = False) -> Setup:
    """`on_epoch_end(setup, epoch, runlog)` runs after each epoch, and once with epoch 0 before the first step of a
    fresh run (the weights at their initialisation: where a curve starts). `trust_code`: unpickle the --resume
    checkpoint without the safe reader's limits (--trust-checkpoint-code)."""
    setup = build(cfg, log, trust_code)
    cfg, model = setup.cfg, setup.model
    main_process = setup.rank == 0
    if main_process:
        save_yaml(cfg, setup.run_dir / "config.yaml")
    runlog = RunLog(setup.run_dir, enabled=main_process, console=log)
    loader = training_loader(setup)
    net: torch.nn.Module = model  # what the steps call: the model, or its DDP wrapper
    if setup.world > 1:
        # queue and teacher are kept identical by all-gathers; broadcasting buffers would copy the queue each step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # newer torch renames the flag; older lacks the new name
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[setup.device.index] if setup.device.type == "cuda" else None,
                broadcast_buffers=False)
    steps = loader.steps_per_epoch()
    if main_process:
        log(f"training {cfg.method} ({cfg.arch}, {setup.size}px) on {len(setup.source)} images of "
            f"{setup.source.name}: {steps} steps/epoch, {epoch_span(setup.start_epoch, cfg.epochs)}, "
            f"device {setup.device}, {setup.world} process(es), run folder {setup.run_dir}")
    epoch_run = EpochRunner(setup, net, loader, steps, runlog)
    try:
        with epoch_run.stop:
            if on_epoch_end is not None and setup.start_epoch == 1 and setup.start_step == 0:
                on_epoch_end(setup, 0, runlog)
            for epoch in range(setup.start_epoch, cfg.epochs + 1):
                start_step = setup.start_step if epoch == setup.start_epoch else 0
                done = epoch_run(epoch, start_step)
                if done < steps:  # stopped by a signal inside the epoch
                    epoch_run.save(epoch, done)
                    raise epoch_run.preempted(epoch, done)
                if on_epoch_end is not None and not epoch_run.stopped:
                    on_epoch_end(setup, epoch, runlog)
                epoch_run.save(epoch, steps)
                if epoch_run.stopped and epoch < cfg.epochs:
                    raise epoch_run.preempted(epoch, steps)
            epoch_run.stop.leave_together()  # the last checkpoint is written: every rank ends here
    except Preempted:
        if setup.joined_group:
            leave_distributed()
        raise
    finally:
        runlog.close()
    if setup.joined_group:
        leave_distributed()
    return setup


class EpochRunner:
    """One epoch of steps, with the mid-epoch checkpoints, stop requests and non-finite guard it needs."""

    def __init__(self, setup: Setup, net, loader, steps: int, runlog: RunLog) -> None:
        self.setup, self.net, self.loader, self.steps, self.runlog = setup, net, loader, steps, runlog
        cfg = setup.cfg
        self.autocast = (torch.autocast(setup.device.type, dtype=torch.bfloat16) if use_bf16(cfg, setup.device)
                         else contextlib.nullcontext())
        self.memory_format = torch.channels_last if use_channels_last(cfg, setup.device) else torch.contiguous_format
        self.stop = StopRequests(setup.world)
        self.guard = NonFiniteGuard(setup.model, cfg.on_nonfinite)
        self.lr = cfg.lr
        self.stopped = False  # every rank agreed to stop after the current step
        self.warm = cfg.compile == "off"  # a compiled run says how long its first step (the compilation) took

    def __call__(self, epoch: int, start_step: int) -> int:
        """Runs steps start_step..steps-1; returns the number of steps done (fewer when asked to stop)."""
        setup, cfg = self.setup, self.setup.cfg
        self.lr = learning_rate(epoch, cfg.lr, cfg.epochs, cfg.schedule, cfg.lr_decay_epochs, cfg.lr_decay_rate)
        for group in setup.optimizer.param_groups:
            group["lr"] = self.lr
        self.net.train()
        bad_files: list[str] = []
        window = Window(cfg.print_freq)
        bar = self.runlog.progress(self.steps, f"epoch {epoch}/{cfg.epochs}", initial=start_step)
        batches = self.loader.epoch(epoch, start_step)
        done = start_step
        try:
            for step in range(start_step, self.steps):
                before = time.perf_counter()
                batch = next(batches)
                window.wait += time.perf_counter() - before
                bad_files.extend(batch.bad)
                result = self.step(batch, step)
                if not self.warm:
                    self.report_warm_up(time.perf_counter() - before)
                if result is not None:
                    window.add(result)
                done = step + 1
                bar.update(1)
                self.stopped = self.stop.should_stop()
                if window.full() or done == self.steps or self.stopped:
                    self.guard.check(epoch, self.lr)
                    self.log_window(window, epoch, step, bar)
                if self.stopped:
                    break
                if cfg.ckpt_every_steps and done % cfg.ckpt_every_steps == 0 and done < self.steps:
                    self.save(epoch, done)
        finally:
            bar.close()  # also when a step raises: a bar left open shifts every later console line
        report_bad_files(setup, epoch, bad_files, done - start_step, self.runlog)
        return done

    def step(self, batch, step: int) -> dict[str, Tensor] | None:
        """One optimizer step; the values to log, or None for a skipped step."""
        model, optimizer = self.setup.model, self.setup.optimizer
        key = batch.key.contiguous(memory_format=self.memory_format) if batch.key.dim() == 4 else batch.key
        query = batch.query.contiguous(memory_format=self.memory_format)
        self.guard.before_forward()
        with self.autocast:
            loss, stats, after = self.net(key, query, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.guard.after_backward(loss, stats, step):  # a sync only in skip mode
            self.guard.skip()  # and `after` is dropped: the teacher and the queue stay as they were
            optimizer.zero_grad(set_to_none=True)
            self.runlog.say(f"step {step}: non-finite loss or gradient, step skipped "
                            f"({self.guard.skipped} so far)")
            return None
        optimizer.step()
        model.apply_step(after)  # the method's post-step work (EMA teacher, enqueue), all of it, here
        return {"loss": loss, **stats}

    def report_warm_up(self, seconds: float) -> None:
        self.warm = True
        self.runlog.say(f"compile={self.setup.cfg.compile}: the first step (compiling the networks and the views' "
                        f"pixel work) took {seconds:.1f} s")
        self.runlog.record("compile", 0, {"first_step_seconds": round(seconds, 2)})

    def log_window(self, window: Window, epoch: int, step: int, bar) -> None:
        cfg = self.setup.cfg
        if not window.count:
            return
        values = window.flush(cfg.batch_size)  # the one host sync per window
        values.update(lr=self.lr, epoch=epoch)
        if self.guard.skipped:
            values["skipped_steps"] = self.guard.skipped
        self.runlog.record("train", (epoch - 1) * self.steps + step + 1, values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", ips=f"{values['images_per_s']:.0f}")

    def save(self, epoch: int, done: int) -> None:
        """Rank 0 writes. `done` == steps is an epoch end, stored as step_in_epoch 0 (the original's meaning)."""
        setup = self.setup
        self.guard.check(epoch, self.lr)  # never save a poisoned state
        if setup.rank != 0:
            return
        step_in_epoch = 0 if done == self.steps else done
        stem = image_size_and_stem(setup.cfg, setup.source)[1]
        state = ck.make_checkpoint(setup.cfg, setup.model, setup.optimizer, epoch, step_in_epoch, stem)
        global_step = (epoch - 1) * self.steps + done
        path = ck.save_rolling(state, setup.run_dir, global_step, setup.cfg.keep_checkpoints)
        if step_in_epoch == 0 and (epoch % setup.cfg.save_freq == 0 or epoch == setup.cfg.epochs):
            ck.copy_checkpoint(path, setup.run_dir / ck.epoch_name(epoch))

    def preempted(self, epoch: int, done: int) -> Preempted:
        """The exception that ends a stopped run, once every rank has got here (the checkpoint is written)."""
        self.stop.leave_together()
        where = f"epoch {epoch}, step {done}/{self.steps}" if done < self.steps else f"the end of epoch {epoch}"
        return Preempted("{signal} received: checkpoint written at {where} in {folder}; continue with {resume} auto "
                         "(exit code {code})", signal=self.stop.name, where=where, folder=self.setup.run_dir,
                         code=Preempted.exit_code)


class Window:
    """Running sums of the logged values over print_freq steps, kept on the device until flushed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reset()

    def reset(self) -> None:
        self.totals: dict[str, Tensor] = {}
        self.count, self.wait, self.tick = 0, 0.0, time.perf_counter()

    def add(self, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            self.totals[name] = self.totals.get(name, 0) + value.detach()
        self.count += 1

    def full(self) -> bool:
        return self.count >= self.size

    def flush(self, batch_size: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.tick
        values = {name: float(total) / self.count for name, total in self.totals.items()}
        values.update(images_per_s=self.count * batch_size / elapsed, data_wait=self.wait / elapsed)
        self.reset()
        return values


def report_undecodable(run_dir: Path, source: Source, limit: float, log: Callable[[str], None]) -> None:
    """Files a folder held in memory left out when it was decoded: listed as epoch 0, and held to the same limit."""
    bad = source.bad_files
    with open(run_dir / "bad_files.txt", "a") as fh:
        fh.writelines(f"epoch 0\t{path}\n" for path in bad)
    log(f"{len(bad)} unreadable image(s) left out of {source.name}; listed in {run_dir / 'bad_files.txt'}")
    if len(bad) > limit * (len(source) + len(bad)):
        raise SettingError("{n} of the {seen} images of {name} are unreadable (more than {max_bad_fraction}={limit}); "
                           "see {listed}", n=len(bad), seen=len(source) + len(bad), name=source.name, limit=limit,
                           listed=run_dir / "bad_files.txt")


def report_bad_files(setup: Setup, epoch: int, bad: list[str], steps: int, runlog: RunLog) -> None:
    if not bad or steps <= 0:
        return
    with open(setup.run_dir / "bad_files.txt", "a") as fh:
        fh.writelines(f"epoch {epoch}\t{path}\n" for path in bad)
    runlog.say(f"epoch {epoch}: {len(bad)} unreadable image(s) skipped and replaced; listed in "
               f"{setup.run_dir / 'bad_files.txt'}")
    runlog.record("data", epoch, {"bad_images": len(bad)})
    seen = steps * setup.cfg.batch_size // setup.world
    if len(bad) > setup.cfg.max_bad_fraction * seen:
        raise SettingError("{n} of {seen} images read in epoch {epoch} were unreadable (more than {max_bad_fraction}="
                           "{limit}); see {listed}", n=len(bad), seen=seen, epoch=epoch,
                           limit=setup.cfg.max_bad_fraction, listed=setup.run_dir / "bad_files.txt")


def epoch_span(first: int, last: int) -> str:
    return f"epochs {first}..{last}" if first <= last else f"all {last} epochs already trained"
