"""The paper's pictures from a checkpoint: the teacher's soft targets over the memory bank (Figure 1) and k-means
clusters of the features.

Neighbours: the queue of a checkpoint holds embeddings, not images, so the figure builds a bank that stands
in for it: `anchors` training images under the teacher's augmentation, embedded by the teacher, exactly what
the queue holds after as many training steps. For each query image, the student sees one augmentation and the
teacher another; the teacher's similarities to the bank, softmax at T_t, are the target ISD distils (the top
anchors are drawn with their probability), while MoCo's target puts all the mass on the other view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isd.data.batch_augment import BatchAugment, two_views
from isd.data.batches import batches_of, view_augments
from isd.data.sources import Source
from isd.eval.features import extract_features
from isd.methods import ISD
from isd.plots import pyplot


def display(x: Tensor, source: Source) -> Tensor:
    """A normalised view back to [0, 1] HWC (or HW for one channel) for imshow."""
    mean = torch.tensor(source.mean).view(-1, 1, 1)
    std = torch.tensor(source.std).view(-1, 1, 1)
    img = (x.detach().float().cpu() * std + mean).clamp(0, 1)
    return img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)


@dataclass
class NeighbourRows:
    query_views: Tensor  # [Q, C, S, S], normalised (the student's view)
    key_views: Tensor  # [Q, C, S, S] (the teacher's view)
    anchor_views: Tensor  # [Q, top, C, S, S]
    teacher_p: Tensor  # [Q, top]: the target probability of each shown anchor
    student_p: Tensor  # [Q, top]: the student's probability of the same anchors
    teacher_mass: Tensor  # [Q]: total target mass on the shown anchors
    anchor_labels: Tensor  # [Q, top]
    query_labels: Tensor  # [Q]
    bank_size: int
    temp_teacher: float
    temp_student: float


@torch.no_grad()
def neighbour_rows(model: ISD, cfg, source: Source, size: int, device: torch.device, queries: int = 4,
                   anchors: int = 4096, top: int = 5, seed: int = 0, batch: int = 512) -> NeighbourRows:
    model.eval()
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    anchors = min(anchors, len(source) - queries)
    anchor_idx, query_idx = order[:anchors], order[anchors:anchors + queries]
    key_aug, query_aug = view_augments(cfg, size, source)
    gen = torch.Generator().manual_seed(seed + 1)
    images = batches_of(source)
    bank_views, bank = [], []
    for start in range(0, anchors, batch):
        views = (key_aug or query_aug)(images.uint8(anchor_idx[start:start + batch], size), generator=gen)
        bank_views.append(views)
        bank.append(model.teacher_embed(views.to(device)))
    bank_views_all, bank_all = torch.cat(bank_views), torch.cat(bank)
    chosen = images.uint8(query_idx, size)
    key_views, query_views = two_views(chosen, key_aug, query_aug, gen)
    k = model.teacher_embed(key_views.to(device))
    q = model.student_embed(query_views.to(device))
    temp_t, temp_s = model.temp_teacher, model.temp_student
    p_t = F.softmax(k @ bank_all.T / temp_t, dim=1)
    p_s = F.softmax(q @ bank_all.T / temp_s, dim=1)
    best_p, best = p_t.topk(top, dim=1)
    return NeighbourRows(query_views, key_views, bank_views_all[best.cpu()], best_p.cpu(), p_s.gather(1, best).cpu(),
                         best_p.sum(1).cpu(), source.targets[anchor_idx][best.cpu()], source.targets[query_idx],
                         anchors, temp_t, temp_s)


def draw_neighbours(rows: NeighbourRows, source: Source, path, title: str) -> None:
    plt = pyplot()
    count, top = rows.teacher_p.shape
    cols = top + 3
    fig, axes = plt.subplots(count, cols, figsize=(1.45 * cols, 1.75 * count), squeeze=False)
    gray = rows.query_views.shape[1] == 1
    for r in range(count):
        name = source.classes[int(rows.query_labels[r])]
        cells = [(rows.query_views[r], f"student view\n({name})"), (rows.key_views[r], "teacher view")]
        for c, (view, label) in enumerate(cells):
            _show(axes[r][c], display(view, source), label, gray)
        for j in range(top):
            label = (f"p {rows.teacher_p[r, j]:.1%} (s {rows.student_p[r, j]:.1%})\n"
                     f"{source.classes[int(rows.anchor_labels[r, j])]}")
            _show(axes[r][2 + j], display(rows.anchor_views[r, j], source), label, gray)
        ax = axes[r][cols - 1]
        ax.axis("off")
        ax.text(0.0, 0.5, f"ISD target: {rows.teacher_mass[r]:.0%}\nof the mass on\nthese {top} anchors\n\n"
                f"MoCo target:\n1 on the teacher view,\n0 on all {rows.bank_size}", fontsize=6.5, va="center")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- clusters


def kmeans(x: Tensor, k: int, iters: int = 50, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Spherical k-means on L2-normalised rows (k-means++ seeding): (assignments [N], centroids [k, D])."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = F.normalize(x.float(), dim=1)
    centroids = x[torch.randint(len(x), (1,), generator=gen)]
    for _ in range(1, k):  # k-means++: far points are more likely to start a cluster
        dist = (1 - x @ centroids.T).clamp_min(0).min(dim=1).values
        pick = torch.multinomial((dist + 1e-12).cpu(), 1, generator=gen)
        centroids = torch.cat([centroids, x[pick.to(x.device)]])
    assign = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(iters):
        new = (x @ centroids.T).argmax(dim=1)
        if torch.equal(new, assign) and _ > 0:
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = torch.bincount(assign, minlength=k) == 0
        centroids = torch.where(empty[:, None], centroids, F.normalize(sums, dim=1))
    return assign, centroids


@dataclass
class ClusterRows:
    members: list[Tensor]  # per cluster (largest first): indices into the source, nearest the centroid first
    sizes: list[int]
    majority: list[tuple[int, float]]  # (class, share of the cluster)
    purity: float  # share of all images in their cluster's majority class


@torch.no_grad()
def cluster_rows(net: nn.Module, source: Source, size: int, device: torch.device, k: int, per_row: int = 10,
                 max_images: int = 5000, seed: int = 0, num_workers: int = 4) -> ClusterRows:
    picked = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    feats, labels = extract_features(net, source, size, device, num_workers=num_workers, indices=picked)
    assign, centroids = kmeans(feats, k, seed=seed)
    feats, labels = F.normalize(feats.float(), dim=1), labels.to(assign.device)
    rows = []
    for c in range(k):
        inside = (assign == c).nonzero().squeeze(1)
        if len(inside) == 0:
            continue
        closeness = feats[inside] @ centroids[c]
        nearest = inside[closeness.argsort(descending=True)[:per_row]]
        counts = torch.bincount(labels[inside], minlength=len(source.classes))
        rows.append((len(inside), picked[nearest.cpu()], (int(counts.argmax()), float(counts.max()) / len(inside)),
                     int(counts.max())))
    rows.sort(key=lambda r: -r[0])
    purity = sum(r[3] for r in rows) / len(picked)
    return ClusterRows([r[1] for r in rows], [r[0] for r in rows], [r[2] for r in rows], purity)


def draw_clusters(rows: ClusterRows, source: Source, size: int, path, title: str) -> None:
    plt = pyplot()
    per_row = max(len(m) for m in rows.members)
    fig, axes = plt.subplots(len(rows.members), per_row + 1, figsize=(1.0 * (per_row + 1.6), 1.05 * len(rows.members)),
                             squeeze=False, gridspec_kw={"width_ratios": [1.6] + [1] * per_row})
    plain = BatchAugment("none", size, source.mean, source.std)
    for r, members in enumerate(rows.members):
        cls, share = rows.majority[r]
        label = axes[r][0]
        label.axis("off")
        label.text(0.0, 0.5, f"{rows.sizes[r]} images\n{share:.0%} {source.classes[cls]}", fontsize=7, va="center")
        views = plain(batches_of(source).uint8(members, size))
        for j in range(per_row):
            ax = axes[r][j + 1]
            if j < len(members):
                _show(ax, display(views[j], source), None, views.shape[1] == 1)
            else:
                ax.axis("off")
    fig.suptitle(f"{title}; purity {rows.purity:.0%}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _show(ax, img: Tensor, label: str | None, gray: bool) -> None:
    ax.imshow(img.numpy(), cmap="gray" if gray else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if label:
        ax.set_title(label, fontsize=6)
