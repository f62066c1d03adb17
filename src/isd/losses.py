"""The methods' losses as plain functions of unit-normalised embeddings (call them in fp32).

- `isd_loss(q, k, queue, temp_s, temp_t)`: ISD's KL divergence between the teacher's and the student's
  similarity distributions over the memory queue.
- `byol_loss(q, k)`: BYOL's regression, Σ‖q − k‖² / B.
- `info_nce(q, k, queue, temp)`: MoCo-v2's InfoNCE, the positive q·k against the queue as negatives.

Each lives beside its method (`isd.methods.*`); this module only gathers them.
"""

from isd.methods.byol import byol_loss
from isd.methods.isd import isd_loss
from isd.methods.moco import moco_loss as info_nce

__all__ = ["isd_loss", "byol_loss", "info_nce"]
