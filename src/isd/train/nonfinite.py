"""Non-finite loss, gradient or teacher weight: stop with a diagnostic, or skip the step (`--on-nonfinite`).

In `stop` mode nothing syncs per step: the first bad step's facts are kept on the device and read where the
loop syncs anyway (each print_freq window, and always before a checkpoint is written), so a poisoned state is
never saved. In `skip` mode the decision is needed before optimizer.step(), so each step syncs once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from isd.errors import NonFiniteError


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
        self.first: dict[str, Tensor] | None = None  # the first bad step seen since the last check

    def before_forward(self) -> None:
        if self.mode == "skip":
            self._saved = [b.clone() for b in self.buffers]

    def step_is_bad(self, loss: Tensor, stats: dict[str, Tensor], step: int) -> Tensor:
        """A 0-d bool on the device; call after backward (gradients are the all-reduced ones under DDP)."""
        grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in self.params]
        bad_grads = ~torch.isfinite(torch.stack(torch._foreach_norm(grads)))
        terms = torch.stack([loss.detach().float(), *(v.detach().float() for v in stats.values())])
        bad = ~torch.isfinite(terms[0]) | bad_grads.any()
        if self.mode == "stop":
            self._remember_first(bad, terms, bad_grads, step, list(stats))
        return bad

    def _remember_first(self, bad: Tensor, terms: Tensor, bad_grads: Tensor, step: int, names: list[str]) -> None:
        now = {"bad": bad, "step": torch.full_like(terms[0], step), "terms": terms,
               "grad": bad_grads.int().argmax().float()}
        if self.first is None:
            self.first, self.term_names = now, ["loss", *names]
            return
        take = bad & ~self.first["bad"]
        self.first = {k: torch.where(take, now[k], self.first[k]) if k != "bad" else self.first[k] | bad
                      for k in now}

    def skip(self) -> None:
        """Undo what a bad step's forward did to the BatchNorm statistics; the caller drops the gradients."""
        if self._saved is not None:
            torch._foreach_copy_(self.buffers, self._saved)
        self.skipped += 1

    def check(self, epoch: int, lr: float) -> None:
        """Host-side check at a sync point: raise NonFiniteError naming the first bad step and tensor."""
        first, self.first = self.first, None
        if first is not None and bool(first["bad"]):
            terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(self.term_names, first["terms"].tolist()))
            loss_ok = bool(torch.isfinite(first["terms"][0]))
            tensor = f"gradient of {self.names[int(first['grad'])]}" if loss_ok else "loss"
            raise NonFiniteError("non-finite {tensor} at epoch {epoch}, step {step} (lr {now:.4g}; {terms}); nothing "
                                 "was saved after it. Lower {lr}, check the data, or pass {on_nonfinite} skip; "
                                 "resume from the last checkpoint with {resume} auto", tensor=tensor, epoch=epoch,
                                 step=int(first["step"]), now=lr, terms=terms)
        norms = torch.stack(torch._foreach_norm(self.teacher)) if self.teacher else torch.zeros(1)
        bad_teacher = ~torch.isfinite(norms)
        if bool(bad_teacher.any()):
            name = self.teacher_names[int(bad_teacher.int().argmax())]
            raise NonFiniteError("non-finite teacher weight {name} at epoch {epoch} (lr {now:.4g}); nothing was saved "
                                 "after it. Lower {lr} or raise the teacher momentum ({ema})", name=name, epoch=epoch,
                                 now=lr)
