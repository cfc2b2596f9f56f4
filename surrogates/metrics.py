"""`SegMetrics`: the exact, dataset-level evaluation metrics (SPEC A§1, B1).

Integer counts are accumulated over the whole evaluation set and divided once in `compute`:
    confmat   (C, C+1)  rows GT, columns prediction, valid GT pixels -> miou fwiou macc gacc mdice
                        (column C: pixels predicted as label C, "no class")
    bconfmat  (C, C+1)  the same on the GT trimap (edges dilated by r) -> biou
    edges     (4, C)  n_gt, n_pr, match_pr, match_gt edge counts     -> bf1
    image_*   per-image score sums and image counts                  -> miou_image bf1_image
The state is a dict of tensors that adds up: `merge` two metrics, or all-reduce across DDP ranks.

`SpecMetric` is the exact value of a metric spec (surrogates/spec.py): per-class tp fp fn tn as
int64 counts (on the GT band when the spec has one), reduced as the spec says. `SegMetrics(...,
specs=[...])` carries spec metrics and adds each one's value under its name.
"""

import math
from collections.abc import Sequence

import torch

from surrogates.boundary import (
    class_bits,
    compact_labels,
    dilate_or,
    has_class_bit,
    label_edges,
)
from surrogates.spec import MetricSpec, absent_classes, as_spec, class_values, reduce_counts

_FIELDS = ("confmat", "bconfmat", "edges", "image_sums", "image_counts")
# The numbers compute() returns, in the column order of every run file (trials.csv, metrics.csv):
# the six target metrics of the search (surrogates.METRICS), then three summaries.
METRIC_COLUMNS = (
    *("miou", "fwiou", "biou", "macc", "gacc", "bf1"),
    *("mdice", "miou_image", "bf1_image"),
)


class SegMetrics:
    """Exact dataset-level segmentation metrics.

    Args:
        num_classes: C. Labels outside [0, C) (255 and anything else) are ignored.
        ignore_index: the void label; kept for symmetry with the losses (every label outside
            [0, C) is void).
        drop_background: leave class 0 out of the biou trimap and the bf1 / bf1_image class
            means (VOC reference evaluation). The background IoU stays in the biou mean (A§1.3).
        tolerance: boundary tolerance r in pixels, square (2r+1)^2 window (reference r = 5).
        boundary: also count the boundary metrics (biou, bf1, bf1_image). False skips their
            edge extraction and dilations, 2-5x the cost of the region counts, and leaves
            them NaN.
        specs: metric specs (MetricSpec, a built-in spec name, a dict or a YAML path) computed
            alongside, each a `SpecMetric` with this metric's num_classes, ignore_index and
            drop_background; compute() adds each value under the spec's name (and its
            per-class values under "per_class" for pooled mean/weighted specs). A name that is
            already a result here (miou, miou_image, ...) is refused: SegMetrics computes
            those already, to the same values (tests/test_metric_spec.py).

    `update(pred, target)` takes int64 (N, H, W) predicted labels and GT labels. A predicted
    label equal to C means "no class" (the threshold procedure `T` leaves pixels whose largest
    probability is below 0.5 unassigned): it counts against the GT class's IoU and accuracy,
    belongs to no predicted class, and its neighbours of a class are edges. `compute()`
    returns floats under miou fwiou macc gacc biou bf1 mdice miou_image bf1_image (NaN when
    undefined) and per-class lists under "per_class".

    fwiou = sum_c freq_c IoU_c over classes with defined IoU (textbook). The reference computes
    nanmean(freq * IoU) * C, which is inflated when a class is absent from GT and prediction.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        drop_background: bool = False,
        tolerance: int = 5,
        boundary: bool = True,
        specs: Sequence = (),
    ):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not isinstance(tolerance, int) or tolerance < 0:
            raise ValueError(f"tolerance must be an integer >= 0 pixels, got {tolerance!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.drop_background = drop_background
        self.tolerance = tolerance
        self.boundary = boundary
        self.spec_metrics = [
            SpecMetric(spec, num_classes, ignore_index, drop_background) for spec in specs
        ]
        names = [m.spec.name for m in self.spec_metrics]
        for name in names:
            if name in (*METRIC_COLUMNS, "per_class") or names.count(name) > 1:
                raise ValueError(
                    f"metric spec name '{name}' is taken (SegMetrics computes "
                    f"{', '.join(METRIC_COLUMNS)} itself, and spec names must differ)"
                )
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.state = {
            "confmat": torch.zeros(c, c + 1, dtype=torch.int64),
            "bconfmat": torch.zeros(c, c + 1, dtype=torch.int64),
            "edges": torch.zeros(4, c, dtype=torch.int64),
            "image_sums": torch.zeros(2, dtype=torch.float64),  # miou_image, bf1_image
            "image_counts": torch.zeros(2, dtype=torch.int64),
        }
        for metric in self.spec_metrics:
            metric.reset()

    # --- accumulation -------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = self._check(pred, target)
        c = self.num_classes
        n = pred.shape[0]
        device = pred.device
        self.state = {k: v.to(device) for k, v in self.state.items()}
        valid = (target >= 0) & (target < c)
        # labels and bin indices in int32 where they fit: half the memory traffic of int64
        index_type = torch.int32 if n * c * (c + 1) < 2**31 else torch.int64
        pred = pred.to(index_type)
        gt = torch.where(valid, target.to(index_type), c)  # every void label becomes C

        # per-image confusion matrices (N, C, C+1) in one bincount; their sum is the batch's
        columns = c + 1
        image_index = torch.arange(n, device=device, dtype=index_type).view(n, 1, 1)
        pairs = (image_index * c + gt) * columns + pred
        per_image_cm = _masked_bincount(pairs, valid, n * c * columns).view(n, c, columns)
        self.state["confmat"] += per_image_cm.sum(0)
        for metric in self.spec_metrics:
            metric.add(pred, gt, valid, per_image_cm)
        if not self.boundary:
            self._add_image_scores(per_image_cm, None)
            return

        # the boundary part reads labels in the narrowest type (memory-bound passes)
        gt_small, pred_small = compact_labels(gt, c), compact_labels(pred, c)
        gt_edges = label_edges(gt_small) & valid  # (N, H, W)
        # prediction edges are not masked by void (A§1.4); unassigned pixels are no class's edge
        pred_edges = label_edges(pred_small) & (pred_small < c)

        # biou: confusion matrix on the trimap = dilated (foreground) GT edges, valid pixels
        band_source = gt_edges & (gt != 0) if self.drop_background else gt_edges
        in_band = dilate_or(band_source, self.tolerance) & valid
        band_cm = _masked_bincount(gt * columns + pred, in_band, c * columns)
        self.state["bconfmat"] += band_cm.view(c, columns)

        edge_counts = self._edge_counts(gt, gt_small, gt_edges, pred, pred_small, pred_edges)
        self.state["edges"] += edge_counts.sum(1)
        self._add_image_scores(per_image_cm, edge_counts)

    def _edge_counts(self, gt, gt_small, gt_edges, pred, pred_small, pred_edges) -> torch.Tensor:
        """n_gt, n_pr, match_pr, match_gt per image and class: (4, N, C) int64 (A§1.4)."""
        c = self.num_classes
        n = gt.shape[0]
        # bit sets of the classes with an edge within r of each pixel (surrogates/boundary.py)
        gt_near = dilate_or(class_bits(gt_small, gt_edges, c), self.tolerance)
        pred_near = dilate_or(class_bits(pred_small, pred_edges, c), self.tolerance)
        # a predicted edge pixel of class k matches if a GT edge of class k is within r, and
        # vice versa
        pred_matched = has_class_bit(gt_near, pred_small.clamp(max=c - 1))
        gt_matched = has_class_bit(pred_near, gt_small.clamp(max=c - 1))
        # one bincount per side: bins [0, NC) count the unmatched edge pixels of each (image,
        # class), bins [NC, 2NC) the matched ones (masks converted first: int * bool runs a
        # slow mixed-type loop)
        image = torch.arange(n, device=gt.device, dtype=gt.dtype).view(n, 1, 1) * c
        gt_bins = image + gt + gt_matched.to(gt.dtype) * (n * c)
        pred_bins = image + pred + pred_matched.to(gt.dtype) * (n * c)
        gt_side = _masked_bincount(gt_bins, gt_edges, 2 * n * c)
        pred_side = _masked_bincount(pred_bins, pred_edges, 2 * n * c)
        gt_side, pred_side = gt_side.view(2, n, c), pred_side.view(2, n, c)
        return torch.stack([gt_side.sum(0), pred_side.sum(0), pred_side[1], gt_side[1]])

    def _add_image_scores(self, per_image_cm: torch.Tensor, edge_counts: torch.Tensor | None):
        """miou_image: classes in the image's GT or prediction; bf1_image: per-image BF score
        over classes with GT or predicted edges (Csurka et al. 2013), 0 for unmatched classes."""
        cm = per_image_cm.double()
        inter = cm.diagonal(dim1=1, dim2=2)
        union = cm.sum(2) + cm[:, :, :-1].sum(1) - inter
        seen = union > 0
        iou = torch.where(seen, inter / union.clamp(min=1), 0.0)
        has_pixels = seen.any(1)
        miou_image = iou.sum(1) / seen.sum(1).clamp(min=1)
        if edge_counts is None:
            self.state["image_sums"][0] += miou_image[has_pixels].sum()
            self.state["image_counts"][0] += has_pixels.sum()
            return

        n_gt, n_pr, match_pr, match_gt = edge_counts.double()
        precision = torch.where(n_pr > 0, match_pr / n_pr.clamp(min=1), 0.0)
        recall = torch.where(n_gt > 0, match_gt / n_gt.clamp(min=1), 0.0)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        with_edges = (n_gt > 0) | (n_pr > 0)
        if self.drop_background:
            with_edges[:, 0] = False
        bf1_image = (f1 * with_edges).sum(1) / with_edges.sum(1).clamp(min=1)
        has_edges = with_edges.any(1)

        self.state["image_sums"] += torch.stack(
            [miou_image[has_pixels].sum(), bf1_image[has_edges].sum()]
        )
        self.state["image_counts"] += torch.stack([has_pixels.sum(), has_edges.sum()])

    def _check(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _check_labels(pred, target, self.num_classes)

    # --- combining ----------------------------------------------------------------------------

    def merge(self, other: "SegMetrics") -> "SegMetrics":
        """Add another metric's counts (same settings) into this one; returns self."""
        same = (self.num_classes, self.drop_background, self.tolerance, self.boundary)
        theirs = (other.num_classes, other.drop_background, other.tolerance, other.boundary)
        same += tuple(m.spec for m in self.spec_metrics)
        theirs += tuple(m.spec for m in other.spec_metrics)
        if same != theirs:
            raise ValueError(f"cannot merge SegMetrics with settings {theirs} into {same}")
        for key in _FIELDS:
            self.state[key] = self.state[key] + other.state[key].to(self.state[key].device)
        for mine, their_metric in zip(self.spec_metrics, other.spec_metrics, strict=True):
            mine.merge(their_metric)
        return self

    def all_reduce(self) -> None:
        """Sum the counts over all torch.distributed processes (call before `compute`)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for value in self.state.values():
                dist.all_reduce(value)
        for metric in self.spec_metrics:
            metric.all_reduce()

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v.clone() for k, v in self.state.items()}
        for metric in self.spec_metrics:  # "spec/<name>/<field>"
            state |= {f"spec/{metric.spec.name}/{k}": v for k, v in metric.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: state[k].clone() for k in _FIELDS}
        for metric in self.spec_metrics:
            prefix = f"spec/{metric.spec.name}/"
            metric.load_state_dict(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            )

    # --- results ------------------------------------------------------------------------------

    def compute(self) -> dict:
        cm = self.state["confmat"].double().cpu()
        inter = cm.diagonal()
        gt_count, pred_count = cm.sum(1), cm[:, :-1].sum(0)
        iou = inter / (gt_count + pred_count - inter)  # 0/0 = NaN: class absent, skipped
        acc = inter / gt_count
        dice = 2 * inter / (gt_count + pred_count)
        total = cm.sum()
        freq = gt_count / total
        biou = _iou(self.state["bconfmat"].double().cpu())

        n_gt, n_pr, match_pr, match_gt = self.state["edges"].double().cpu()
        precision = match_pr / (n_pr + 1e-8)
        recall = match_gt / n_gt  # NaN for classes without GT edges: skipped in the mean
        bf1 = 2 * precision * recall / (precision + recall + 1e-8)
        bf1_classes = bf1[1:] if self.drop_background else bf1

        sums, counts = self.state["image_sums"].cpu(), self.state["image_counts"].cpu()
        tp, fp, fn, tn = _confusion_counts(cm).unbind(-1)  # pooled, for specs after the fact
        results = {
            "miou": _nanmean(iou),
            "fwiou": float((freq * iou).nansum()) if total > 0 else math.nan,
            "macc": _nanmean(acc),
            "gacc": float(inter.sum() / total) if total > 0 else math.nan,
            "biou": _nanmean(biou),
            "bf1": _nanmean(bf1_classes),
            "mdice": _nanmean(dice),
            "miou_image": float(sums[0] / counts[0]) if counts[0] > 0 else math.nan,
            "bf1_image": float(sums[1] / counts[1]) if counts[1] > 0 else math.nan,
            "per_class": {
                "miou": iou.tolist(),
                "macc": acc.tolist(),
                "mdice": dice.tolist(),
                "biou": biou.tolist(),
                "bf1": bf1.tolist(),
                "freq": freq.tolist(),
                **{"tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist(), "tn": tn.tolist()},
            },
        }
        for metric in self.spec_metrics:
            results[metric.spec.name] = metric.compute()
            if metric.spec.images == "pooled" and metric.spec.classes != "micro":
                results["per_class"][metric.spec.name] = metric.per_class()
        return results

    def __str__(self) -> str:
        results = self.compute()
        per_class = results["per_class"]
        lines = ["class      IoU    Acc   BIoU    BF1"]
        for c in range(self.num_classes):
            row = [per_class[k][c] for k in ("miou", "macc", "biou", "bf1")]
            lines.append(f"{c:5d} " + " ".join(f"{100 * v:6.2f}" for v in row))
        summary = ", ".join(
            f"{k} {100 * results[k]:.2f}" for k in ("miou", "fwiou", "macc", "gacc", "biou", "bf1")
        )
        return "\n".join([*lines, summary])


class SpecMetric:
    """The exact value of a metric spec (surrogates/spec.py, docs/metrics.md).

    Args:
        spec: a MetricSpec, a built-in spec name (dice, fbeta, ...), a dict or a YAML path.
        num_classes: C. Labels outside [0, C) are void and counted nowhere.
        ignore_index: the void label (every label outside [0, C) is void).
        drop_background: leave class 0's GT edges out of the band (as SegMetrics' biou); the
            spec's `background` key decides whether class 0 enters the class reduction.

    `update(pred, target)` takes int64 (N, H, W) predicted and GT labels (pred may hold C,
    "unassigned": a false negative of the GT class and a positive of no class). Per image and
    class it counts tp, fp, fn, tn as int64 over the valid pixels (on the band of GT edges
    dilated by the spec's band width when it is > 0); tn = valid pixels - tp - fp - fn. The
    state holds the pooled counts (C, 4) and, for a per_image spec, the sum of the per-image
    values (each computed from that image's integer counts at update) and their number: it
    adds up under `merge` and `all_reduce` and does not grow with the dataset. `compute()` is
    the value (NaN when no image or class is defined), `per_class()` the per-class values of
    the pooled counts.
    """

    def __init__(
        self,
        spec: "MetricSpec | str",
        num_classes: int,
        ignore_index: int = 255,
        drop_background: bool = False,
    ):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.spec = as_spec(spec)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.drop_background = drop_background
        self.reset()

    def reset(self) -> None:
        self.state = {
            "counts": torch.zeros(self.num_classes, 4, dtype=torch.int64),  # tp fp fn tn
            "image_sum": torch.zeros(1, dtype=torch.float64),
            "image_count": torch.zeros(1, dtype=torch.int64),
        }

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = _check_labels(pred, target, self.num_classes)
        valid = (target >= 0) & (target < self.num_classes)
        self.add(pred, torch.where(valid, target, self.num_classes), valid)

    @torch.no_grad()
    def add(self, pred, gt, valid, per_image_cm: torch.Tensor | None = None) -> None:
        """Count checked labels: gt with every void label C. per_image_cm: the (N, C, C+1)
        valid-pixel confusion matrices SegMetrics already has, reused when there is no band."""
        n, c = pred.shape[0], self.num_classes
        self.state = {k: v.to(pred.device) for k, v in self.state.items()}
        if self.spec.band > 0 or per_image_cm is None:
            mask = valid & self._band(gt, valid) if self.spec.band > 0 else valid
            image = torch.arange(n, device=pred.device, dtype=pred.dtype).view(n, 1, 1)
            pairs = (image * c + gt.to(pred.dtype)) * (c + 1) + pred
            per_image_cm = _masked_bincount(pairs, mask, n * c * (c + 1)).view(n, c, c + 1)
        counts = _confusion_counts(per_image_cm)  # (N, C, 4)
        self.state["counts"] += counts.sum(0)
        if self.spec.images == "per_image":
            values, defined = self._values(counts.double())
            self.state["image_sum"] += values[defined].sum()
            self.state["image_count"] += defined.sum()

    def _band(self, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The GT trimap of SegMetrics' biou: GT edges (of foreground classes with
        drop_background) dilated by the band width."""
        edges = label_edges(compact_labels(gt, self.num_classes)) & valid
        if self.drop_background:
            edges &= gt != 0
        return dilate_or(edges, self.spec.band)

    def _values(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., C, 4) float64 counts -> the spec's value (...) and whether it is defined: some
        valid pixel counted and some class not skipped."""
        values, defined = reduce_counts(self.spec, counts, absent_classes(self.spec, counts))
        return values, defined & (counts[..., 0, :].sum(-1) > 0)

    def merge(self, other: "SpecMetric") -> "SpecMetric":
        """Add another metric's counts (same spec and settings) into this one; returns self."""
        same = (self.spec, self.num_classes, self.drop_background)
        theirs = (other.spec, other.num_classes, other.drop_background)
        if same != theirs:
            raise ValueError(f"cannot merge SpecMetric with settings {theirs} into {same}")
        for key, value in other.state.items():
            self.state[key] = self.state[key] + value.to(self.state[key].device)
        return self

    def all_reduce(self) -> None:
        """Sum the counts over all torch.distributed processes (call before `compute`)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for value in self.state.values():
                dist.all_reduce(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: state[k].clone() for k in ("counts", "image_sum", "image_count")}

    def compute(self) -> float:
        if self.spec.images == "per_image":
            count = int(self.state["image_count"])
            return float(self.state["image_sum"].cpu()) / count if count else math.nan
        value, defined = self._values(self.state["counts"].double().cpu())
        return float(value) if defined else math.nan

    def per_class(self) -> list[float]:
        """The formula on each class's pooled counts; absent classes NaN (skip), 0 or 1."""
        return class_values(self.spec, self.state["counts"].double().cpu()).tolist()

    def __str__(self) -> str:
        lines = [f"class {self.spec.name:>10}"]
        lines += [f"{c:5d} {100 * v:10.2f}" for c, v in enumerate(self.per_class())]
        return "\n".join([*lines, f"{self.spec.name} {100 * self.compute():.2f}"])


def _confusion_counts(cm: torch.Tensor) -> torch.Tensor:
    """(..., C, C+1) confusion matrices (rows GT, last column unassigned) -> (..., C, 4) int64
    tp fp fn tn per class; tn = counted pixels - tp - fp - fn."""
    tp = cm.diagonal(dim1=-2, dim2=-1)
    fp = cm[..., :-1].sum(-2) - tp
    fn = cm.sum(-1) - tp
    tn = cm.sum((-2, -1)).unsqueeze(-1) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], -1).long()


def _check_labels(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) integer label maps (or one (H, W) image each), pred in [0, C] (C =
    unassigned) -> both as int64 (N, H, W)."""
    if pred.dim() == 2:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f"pred and target must both be N x H x W label maps, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    for name, t in (("pred", pred), ("target", target)):
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(
                f"{name} must hold integer labels (argmax the logits first), got dtype {t.dtype}"
            )
    if pred.numel() and (pred.min() < 0 or pred.max() > num_classes):
        bad = pred[(pred < 0) | (pred > num_classes)][0]
        raise ValueError(
            f"pred contains label {int(bad)}, outside [0, {num_classes}] "
            f"({num_classes} = unassigned)"
        )
    return pred.long(), target.long()


def _iou(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU of a (C, C+1) confusion matrix whose last column is 'unassigned'."""
    inter = cm.diagonal()
    return inter / (cm[:, :-1].sum(0) + cm.sum(1) - inter)


def _nanmean(values: torch.Tensor) -> float:
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else math.nan


def _masked_bincount(index: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """bincount of index in [0, size) where mask, without x[mask] (a nonzero + copy): entries
    shift by one and masked-out ones become 0, a bin that is dropped. A product, not
    torch.where(mask, index, size): where with a scalar runs 6x slower on CPU."""
    return torch.bincount(((index + 1) * mask.to(index.dtype)).view(-1), minlength=size + 1)[1:]
