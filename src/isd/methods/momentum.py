"""The common core: a student, its momentum (EMA) teacher, shuffle-BN and the memory queue.

Attribute names follow the original code so checkpoints keep its keys: `encoder_q` (student
backbone with its projection as `fc`), `encoder_k` (teacher), `predict_q` (student predictor),
`queue`. A method subclass builds the heads, declares its queue (if any) and writes `loss()`; nothing else.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from isd.methods.base import AfterStep, ArgumentError, Method, Step, checked_backbone, checked_number


def at_least_fp32(x: Tensor) -> Tensor:
    """Similarities and losses in fp32 even under bf16 autocast; a float64 model stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate a tensor from every rank (rank order); identity in one process."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class MemoryQueue(nn.Module):
    """Ring buffer of K teacher embeddings (+ their labels, for the purity diagnostic only)."""

    queue: Tensor
    labels: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int, init_dim: int = 1) -> None:
        super().__init__()
        size, dim = int(checked_number("queue_size", size, 1, integer=True)), int(checked_number("dim", dim, 1,
                                                                                                   integer=True))
        # `init_dim` = 0 reproduces train_isd.py's normalisation of the random init along the wrong axis
        # (docs/faithfulness.md); 1 gives unit rows, as train_isd_plus.py and MoCo start.
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=init_dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self._cursor: int | None = None  # host copy of ptr: reading the buffer each step would sync the GPU

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._cursor = None

    @torch.no_grad()
    def push(self, keys: Tensor, labels: Tensor | None = None) -> None:
        """Enqueue the (already all-gathered) keys; size % len(keys) == 0 keeps the slice contiguous."""
        if self._cursor is None:
            self._cursor = int(self.ptr)
        start, n = self._cursor, keys.shape[0]
        if start + n > self.queue.shape[0] or keys.shape[1:] != self.queue.shape[1:]:
            raise ArgumentError(f"cannot enqueue {tuple(keys.shape)} keys in a queue of {self.queue.shape[0]} x "
                                f"{self.queue.shape[1]} at position {start}: the queue size must be a multiple of "
                                f"the (global) batch size and the keys {self.queue.shape[1]}-d")
        self.queue[start:start + n] = keys.to(self.queue.dtype)
        if labels is not None:
            self.labels[start:start + n] = labels
        self._cursor = (start + n) % self.queue.shape[0]
        self.ptr.fill_(self._cursor)


class MomentumMethod(Method):
    """A student, its EMA teacher and the loss between them; the queue, where there is one, is `QueuedMethod`'s.

    The teacher moves after the optimizer step (`AfterStep.update_teacher`), with the student just stepped. The
    original moves it at the top of each forward instead: the same update, one step later in the code, so its
    first step sees the teacher updated once from its own copy, and its checkpoints hold a teacher that still
    owes the update of their last step. `catch_up_teacher()` is that update: a new method makes it as it is built
    (before its first step), the loop again after loading such a checkpoint, and every loss stays the original's
    to the bit.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int | None = None, *, ema: float = 0.999) -> None:
        super().__init__()
        backbone, feat_dim = checked_backbone(backbone, feat_dim)
        self.ema = float(checked_number("ema", ema, 0.0, 1.0))
        self.feat_dim = feat_dim
        self.encoder_q = backbone
        self.encoder_q.fc = self.build_projection(feat_dim)
        self.predict_q = self.build_predictor(feat_dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self._pairs: tuple[list[Tensor], list[Tensor]] | None = None
        self.catch_up_teacher()  # a new method is as the original's is at its first step
        self._pairs = None  # listed again at the first step: SyncBatchNorm's conversion replaces BN parameters

    # --- what a method may override -------------------------------------------------------------
    def build_projection(self, feat_dim: int) -> nn.Module:
        return nn.Identity()

    def build_predictor(self, feat_dim: int) -> nn.Module:
        return nn.Identity()

    def loss(self, q: Tensor, k: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    # --- common machinery -----------------------------------------------------------------------
    def _param_lists(self) -> tuple[list[Tensor], list[Tensor]]:
        if self._pairs is None:
            self._pairs = ([p for p in self.encoder_k.parameters()], [p for p in self.encoder_q.parameters()])
        return self._pairs

    @torch.no_grad()
    def update_teacher(self) -> None:
        """θ_t ← m·θ_t + (1−m)·θ_s over parameters only, as one fused multi-tensor op."""
        teacher, student = self._param_lists()
        torch._foreach_mul_(teacher, self.ema)
        torch._foreach_add_(teacher, student, alpha=1.0 - self.ema)

    @torch.no_grad()
    def teacher_embed(self, x: Tensor) -> Tensor:
        """Teacher forward with shuffle-BN across ranks; a plain forward in one process (BN is order-free)."""
        rank, size = world()
        if size == 1:
            return F.normalize(at_least_fp32(self.encoder_k(x)), dim=1)
        local = x.shape[0]
        gathered = all_gather_cat(x)
        perm = torch.randperm(gathered.shape[0], device=x.device)
        dist.broadcast(perm, src=0)
        mine = perm.view(size, -1)[rank]
        k = F.normalize(at_least_fp32(self.encoder_k(gathered[mine])), dim=1)
        # un-shuffle: gather every rank's keys, put them back in sample order, keep this rank's slice
        all_k = all_gather_cat(k)
        restored = torch.empty_like(all_k)
        restored[perm] = all_k
        return restored[rank * local:(rank + 1) * local]

    def student_embed(self, x: Tensor) -> Tensor:
        return F.normalize(at_least_fp32(self.predict_q(self.encoder_q(x))), dim=1)

    def forward(self, key_view: Tensor, query_view: Tensor, labels: Tensor | None = None) -> Step:
        q = self.student_embed(query_view)
        k = self.teacher_embed(key_view)
        with torch.autocast(device_type=q.device.type, enabled=False):
            loss, stats = self.loss(q, k, labels)
        return Step(loss, stats, self.after(k, labels))

    def after(self, k: Tensor, labels: Tensor | None) -> AfterStep:
        return AfterStep(update_teacher=True)

    def apply_step(self, after: AfterStep) -> None:
        if after.update_teacher:
            self.update_teacher()

    def catch_up_teacher(self) -> None:
        self.update_teacher()


class QueuedMethod(MomentumMethod):
    """A momentum method that compares with a memory queue of the teacher's past keys. It declares the queue's
    width (`queue_dim`) and its random start (`queue_init_dim`); the size is `queue_size`. The loss sees the
    queue as it was before this step: the step's keys are enqueued after the optimizer step, so autograd never
    sees the queue change under it and the queue needs no copy per step."""

    queue_init_dim = 1
    queue: MemoryQueue

    def __init__(self, backbone: nn.Module, feat_dim: int | None = None, *, queue_size: int, ema: float) -> None:
        super().__init__(backbone, feat_dim, ema=ema)
        self.queue = MemoryQueue(queue_size, self.queue_dim(self.feat_dim), init_dim=self.queue_init_dim)

    def queue_dim(self, feat_dim: int) -> int:
        raise NotImplementedError

    def after(self, k: Tensor, labels: Tensor | None) -> AfterStep:
        return AfterStep(update_teacher=True, keys=all_gather_cat(k),
                         labels=None if labels is None else all_gather_cat(labels))

    def apply_step(self, after: AfterStep) -> None:
        if after.keys is not None:
            self.queue.push(after.keys, after.labels)
        super().apply_step(after)


def purity(k: Tensor, queue: MemoryQueue, labels: Tensor, top: int = 5) -> Tensor:
    """Fraction of each key's `top` most similar queue entries that share its label (diagnostic only)."""
    nearest = (k @ queue.queue.T).topk(min(top, queue.queue.shape[0]), dim=1).indices
    return (queue.labels[nearest] == labels[:, None]).float().mean()
