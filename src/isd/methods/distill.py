"""CompRess (Koohpayegani, Tejankar & Pirsiavash, NeurIPS 2020): a frozen, pretrained teacher's similarities to a
memory queue, distilled into a student. ISD is its iterative form, with the teacher an EMA of the student; here
the teacher never moves, and the loss is ISD's (`isd_loss`) at one temperature for both.

- **2q** (the original's `train_student.py`): two queues filled in step, row i of both being one image: the
  teacher's embeddings, and those of the student's momentum key encoder (`encoder_k`, the EMA of the student
  with m = `ema`). The student compares with its own queue, the teacher with its own, so their embeddings may
  differ in size and no head is needed.
- **1q** (`train_student_one_queue.py`): one queue of teacher embeddings, which the student compares with too:
  its backbone gets a linear head to the teacher's size (`fc`), and there is no key encoder to move.

Teacher and student see one view of each image (the key view is the query view: augmentation `same/...`). The
teacher is frozen: eval mode whatever the model's mode, no gradients, never updated. With cached teacher
features the teacher is `nn.Identity()` and the key "view" is the cached feature vector of each image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isd.methods.base import AfterStep, ArgumentError, ArgumentTypeError, Step, backbone_feature_dim, checked_number
from isd.methods.isd import isd_loss
from isd.methods.momentum import QueuedMethod, all_gather_cat, at_least_fp32

VARIANTS = ("1q", "2q")


def frozen(teacher: nn.Module) -> nn.Module:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Distill(QueuedMethod):
    """`Distill(student_backbone, teacher)`: CompRess-2q (default) or -1q, queue 128,000, T 0.04, key encoder
    momentum 0.999 (2q), as the original. `teacher` maps images to feature vectors (e.g. a backbone from
    `isd.load_backbone`); `teacher_dim` is read from it where its layers tell, else pass it."""

    def __init__(self, backbone: nn.Module, teacher: nn.Module, feat_dim: int | None = None, *,
                 variant: str = "2q", queue_size: int = 128_000, temp: float = 0.04, ema: float = 0.999,
                 teacher_dim: int | None = None) -> None:
        if variant not in VARIANTS:
            raise ArgumentError(f"variant must be 1q or 2q, got {variant!r}")
        if not isinstance(teacher, nn.Module):
            raise ArgumentTypeError(f"teacher must be a torch.nn.Module (e.g. isd.load_backbone(path)[0]), got "
                                    f"{type(teacher).__name__}")
        known = backbone_feature_dim(teacher)
        if teacher_dim is None and known is None:
            raise ArgumentTypeError(f"teacher_dim: pass the size of the feature vector {type(teacher).__name__} "
                                    "returns (it cannot be read from its layers)")
        self.teacher_dim = int(checked_number("teacher_dim", teacher_dim if teacher_dim is not None else known, 1,
                                              integer=True))
        self.variant = variant
        super().__init__(backbone, feat_dim, queue_size=queue_size, ema=ema)
        self.teacher = frozen(teacher)
        self.temp = float(checked_number("temp", temp, 0.0, low_open=True))
        self._init_queue()

    # --- the heads and the queue ------------------------------------------------------------------
    def student_dim(self) -> int:
        return self.teacher_dim if self.variant == "1q" else self.feat_dim

    def build_projection(self, feat_dim: int) -> nn.Module:
        # 1q compares the student with the teacher's queue: a linear map to the teacher's size
        return nn.Linear(feat_dim, self.teacher_dim) if self.variant == "1q" else nn.Identity()

    def queue_dim(self, feat_dim: int) -> int:
        """The teacher's embeddings, then (2q) the key encoder's: one ring buffer keeps both queues in step."""
        return self.teacher_dim + (feat_dim if self.variant == "2q" else 0)

    @torch.no_grad()
    def _init_queue(self) -> None:
        """The original's random start: each queue uniform in ±1/sqrt(d/3), not normalised."""
        queue = self.queue.queue
        for part in (queue[:, :self.teacher_dim], queue[:, self.teacher_dim:]):
            if part.shape[1]:
                bound = 1.0 / math.sqrt(part.shape[1] / 3)
                part.uniform_(-bound, bound)

    def queues(self) -> tuple[Tensor, Tensor | None]:
        """(the teacher's queue, the student's: None for 1q, which compares with the teacher's)."""
        queue = self.queue.queue
        if self.variant == "1q":
            return queue, None
        return queue[:, :self.teacher_dim], queue[:, self.teacher_dim:]

    # --- the step -----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm keeps its running statistics, dropout stays off
        return self

    def catch_up_teacher(self) -> None:
        """CompRess starts its key encoder as an exact copy and owes no update (nothing to catch up)."""

    @torch.no_grad()
    def teacher_features(self, x: Tensor) -> Tensor:
        return F.normalize(at_least_fp32(self.teacher(x)), dim=1)

    def forward(self, key_view: Tensor, query_view: Tensor, labels: Tensor | None = None) -> Step:
        t = self.teacher_features(key_view)
        s = F.normalize(at_least_fp32(self.encoder_q(query_view)), dim=1)
        teacher_queue, student_queue = self.queues()
        keys = t
        if self.variant == "2q":
            with torch.no_grad():
                s_key = F.normalize(at_least_fp32(self.encoder_k(query_view)), dim=1)
            keys = torch.cat([t, s_key], dim=1)
        with torch.autocast(device_type=s.device.type, enabled=False):
            loss = isd_loss(s, t, teacher_queue, self.temp, self.temp, queue_student=student_queue)
        return Step(loss, {}, AfterStep(update_teacher=self.variant == "2q", keys=all_gather_cat(keys),
                                        labels=None if labels is None else all_gather_cat(labels)))
