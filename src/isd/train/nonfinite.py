"""Non-finite loss, gradient or teacher weight: stop with a diagnostic, or skip the step (`--on-nonfinite`).

In `stop` mode nothing syncs per step: each step's loss, logged stats and gradient norms stay on the device as
one row (two operations), and the rows are read where the loop syncs anyway (each print_freq window, and always
before a checkpoint is written), so a poisoned state is never saved and the first bad step is named. In `skip`
mode the decision is needed before optimizer.step(), so each step syncs once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from isd.errors import NonFiniteError

FOLD = 256  # rows kept as separate tensors before they are stacked into one (a long window stays one tensor)


def bad_rows(rows: Tensor, n_stats: int) -> Tensor:
    """[steps, 1 + n_stats + n_params] rows -> [steps] bool: a non-finite loss or gradient norm (the logged stats
    are not judged)."""
    return ~torch.isfinite(rows[:, 0]) | ~torch.isfinite(rows[:, 1 + n_stats:]).all(dim=1)


def as_table(rows: list[Tensor]) -> Tensor:
    """Single rows and blocks of rows already folded -> one [steps, width] tensor."""
    return torch.cat([r.view(-1, rows[-1].shape[-1]) for r in rows])


class NonFiniteGuard:
    def __init__(self, model: nn.Module, mode: str) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.teacher: list[Tensor] = [p for n, p in model.named_parameters() if not p.requires_grad]
        self.teacher_names = [n for n, p in model.named_parameters() if not p.requires_grad]
        self.mode, self.skipped = mode, 0
        # BatchNorm statistics of a skipped step are put back; the queue and teacher never moved (the loop drops
        # the step's AfterStep)
        self.buffers = [b for n, b in model.named_buffers() if b.is_floating_point() and not n.startswith("queue")]
        self._saved: list[Tensor] | None = None
        self.term_names: list[str] = ["loss"]
        self.rows: list[Tensor] = []  # since the last check: one row per step, or FOLD rows stacked
        self.steps: list[int] = []

    def before_forward(self) -> None:
        if self.mode == "skip":
            self._saved = [b.clone() for b in self.buffers]

    def after_backward(self, loss: Tensor, stats: dict[str, Tensor], step: int) -> bool:
        """Call after backward (gradients are the all-reduced ones under DDP). `stop` mode: keeps the step's row
        for the next `check` and returns False, without a sync. `skip` mode: whether the step is bad (one sync)."""
        grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in self.params]
        row = torch.stack([loss.detach().float(), *(v.detach().float() for v in stats.values()),
                           *torch._foreach_norm(grads)])
        if self.mode == "skip":
            return bool(bad_rows(row.unsqueeze(0), len(stats))[0])
        self.term_names = ["loss", *stats]
        self.rows.append(row)
        self.steps.append(step)
        if len(self.rows) > FOLD:
            self.rows = [as_table(self.rows)]
        return False

    def skip(self) -> None:
        """Undo what a bad step's forward did to the BatchNorm statistics; the caller drops the gradients."""
        if self._saved is not None:
            torch._foreach_copy_(self.buffers, self._saved)
        self.skipped += 1

    def check(self, epoch: int, lr: float) -> None:
        """Host-side check at a sync point: raise NonFiniteError naming the first bad step and tensor."""
        rows, steps, self.rows, self.steps = self.rows, self.steps, [], []
        if rows:
            table = as_table(rows)
            bad = bad_rows(table, len(self.term_names) - 1)
            if bool(bad.any()):
                first = int(bad.int().argmax())
                self._raise_first(table[first], steps[first], epoch, lr)
        norms = torch.stack(torch._foreach_norm(self.teacher)) if self.teacher else torch.zeros(1)
        bad_teacher = ~torch.isfinite(norms)
        if bool(bad_teacher.any()):
            name = self.teacher_names[int(bad_teacher.int().argmax())]
            raise NonFiniteError("non-finite teacher weight {name} at epoch {epoch} (lr {now:.4g}); nothing was saved "
                                 "after it. Lower {lr} or raise the teacher momentum ({ema})", name=name, epoch=epoch,
                                 now=lr)

    def _raise_first(self, row: Tensor, step: int, epoch: int, lr: float) -> None:
        n_terms = len(self.term_names)
        terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(self.term_names, row[:n_terms].tolist()))
        grad_ok = torch.isfinite(row[n_terms:])
        tensor = ("loss" if not bool(torch.isfinite(row[0]))
                  else f"gradient of {self.names[int((~grad_ok).int().argmax())]}")
        raise NonFiniteError("non-finite {tensor} at epoch {epoch}, step {step} (lr {now:.4g}; {terms}); nothing "
                             "was saved after it. Lower {lr}, check the data, or pass {on_nonfinite} skip; "
                             "resume from the last checkpoint with {resume} auto", tensor=tensor, epoch=epoch,
                             step=step, now=lr, terms=terms)
