"""ISD and ISD+: distil the teacher's similarities to a memory queue into the student (docs/faithfulness.md)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from isd.methods.base import checked_number
from isd.methods.momentum import QueuedMethod, purity
from isd.nets.heads import isd_predictor, mlp


def isd_loss(q: Tensor, k: Tensor, queue: Tensor, temp_s: float, temp_t: float,
             queue_student: Tensor | None = None) -> Tensor:
    """KL(softmax(k·Qᵀ/T_t) ‖ softmax(q·Q_sᵀ/T_s)), averaged over the batch, Q_s = Q unless the student compares
    with a queue of its own (CompRess-2q: row i of both queues is one image). Call in fp32."""
    s_q = q @ (queue if queue_student is None else queue_student).T / temp_s
    s_k = k @ queue.T / temp_t
    return F.kl_div(F.log_softmax(s_q, dim=1), F.softmax(s_k, dim=1), reduction="batchmean")


class ISD(QueuedMethod):
    """ResNet-18 recipe (train_isd.py): no projection, predictor d -> d -> d, one temperature for student and
    teacher (`temp_teacher` None), queue 128,000, teacher momentum 0.999."""

    queue_init_dim = 0  # train_isd.py normalises its random initial queue along dim 0 (a quirk we reproduce)

    def __init__(self, backbone: nn.Module, feat_dim: int | None = None, *, queue_size: int = 128_000,
                 temp: float = 0.02, temp_teacher: float | None = None, ema: float = 0.999) -> None:
        super().__init__(backbone, feat_dim, queue_size=queue_size, ema=ema)
        self.temp_student = float(checked_number("temp", temp, 0.0, low_open=True))
        self.temp_teacher = self.temp_student if temp_teacher is None else float(
            checked_number("temp_teacher", temp_teacher, 0.0, low_open=True))

    def queue_dim(self, feat_dim: int) -> int:
        return feat_dim

    def build_predictor(self, feat_dim: int) -> nn.Module:
        return isd_predictor(feat_dim)

    def loss(self, q: Tensor, k: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        loss = isd_loss(q, k, self.queue.queue, self.temp_student, self.temp_teacher)
        stats = {} if labels is None else {"purity": purity(k, self.queue, labels)}
        return loss, stats


class ISDPlus(ISD):
    """ResNet-50 recipe (train_isd_plus.py): MLP projection on student and teacher, MLP predictor, the student's
    temperature 0.1 and the teacher's 0.01, queue 128,000, teacher momentum 0.99."""

    queue_init_dim = 1  # train_isd_plus.py starts from unit rows

    def __init__(self, backbone: nn.Module, feat_dim: int | None = None, *, queue_size: int = 128_000,
                 temp: float = 0.1, temp_teacher: float | None = 0.01, ema: float = 0.99) -> None:
        super().__init__(backbone, feat_dim, queue_size=queue_size, temp=temp, temp_teacher=temp_teacher, ema=ema)

    def queue_dim(self, feat_dim: int) -> int:
        return feat_dim // 4

    def build_projection(self, feat_dim: int) -> nn.Module:
        return mlp(feat_dim, 2 * feat_dim, feat_dim // 4)

    def build_predictor(self, feat_dim: int) -> nn.Module:
        return mlp(feat_dim // 4, 2 * feat_dim, feat_dim // 4)
