"""`SurrogateLoss`: differentiable surrogates of the six target metrics (SPEC A§2, B2).

Every surrogate replaces the metric's counts with soft counts of softmax probabilities passed
through searched monotone curves h (surrogates/curves.py), pooled over the batch, and returns
1 - S. The reference formulas (A§2.2-2.7), with y the one-hot GT and m the valid mask:

    miou   I_c = sum m h_I(p_c) y_c,  U_c = sum m (h_U(p_c) + y_c - h_U(p_c) y_c) + eps,
           S = mean_c I_c / U_c                                   (all C classes)
    fwiou  same I_c, U_c;  S = sum_c f_c I_c / U_c / sum_c f_c    (f_c = GT pixel count)
    biou   miou with m restricted to the GT trimap (edges dilated by `tolerance`)
    macc   S = mean_c sum h(p_c) y_c / (f_c + eps)
    gacc   S = sum_c sum h(p_c) y_c / (sum_c f_c + eps)
    bf1    soft edge B = h3(p) + h4(e) - h3(p) h4(e) - h1(p) h2(e), e = 3x3 erosion of p;
           per-class boundary F1 of B against GT edges with dilation; mean over classes with
           GT edges.
    spec   a MetricSpec (surrogates/spec.py): TP_c = sum m h_TP(p_c) y_c, FP_c = sum m
           h_FP(p_c) (1 - y_c), FN_c = |Y_c| - TP_c, TN_c = sum m - |Y_c| - FP_c (m restricted
           to the GT band when the spec has one), then the spec's formula, with eps added to
           every denominator that holds a count, and its reduction. miou's I_c and U_c - eps
           are TP_c and TP_c + FP_c + FN_c, so the miou spec is the miou surrogate.

Why it is fast: y is one-hot, so h_I (and h for macc/gacc) is evaluated only at each pixel's GT
channel (N x H x W values), and U_c = |Y_c| + sum over all channels of m h_U(p_c) - sum at the GT
channel, so no one-hot tensor is built. The softmax and the union curve run fused, with a
hand-written backward that keeps only the logits and the log-sum-exp (`_SoftmaxSums`). bf1 needs
the dilated GT edges only as "a GT edge of class c within r" (bit sets, surrogates/boundary.py)
and the dilated soft edges only at the GT edge pixels (`_window_max`), so no N x C x H x W max
filter runs; its backward is hand-written too (`_SoftBoundarySums`) and sends the gradient of
every min and max to the same window entry as the reference's max_pool2d, ties included. The
kernels are compiled (surrogates/fused.py) and, on a CPU, run on a few images at a time, which
keeps inductor's intermediates small enough to be recycled instead of paged in afresh.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from surrogates.boundary import class_bits, class_mask, compact_labels, dilate_or, label_edges
from surrogates.checks import check_finite, check_logits_target, debug_default, unknown_name
from surrogates.curves import (
    METRIC_CURVES,
    bezier,
    bezier_value_and_slope,
    check_theta,
    curve_tables,
    preset_theta,
)
from surrogates.fused import fused
from surrogates.spec import (
    BUILTIN_SPECS,
    MetricSpec,
    as_spec,
    eps_divide,
    reduce_counts,
    spec_curves,
    spec_theta,
)

METRICS = tuple(METRIC_CURVES)  # miou fwiou biou macc gacc bf1
BOUNDARY_METRICS = ("biou", "bf1")
CLASS_REDUCTIONS = ("all", "present")
_DEFAULT_DROP_BACKGROUND = {"biou": True, "bf1": False}  # reference configs (A§2.4, A§2.7)


class SurrogateLoss(nn.Module):
    """1 - S, where S is a differentiable surrogate of `metric` (SPEC B2).

    Args:
        metric: one of miou, fwiou, biou, macc, gacc, bf1 (the hand-written kernels); or a
            metric spec (surrogates/spec.py): a MetricSpec, a dict, another built-in spec
            name (dice, fbeta, tversky, ...) or a YAML path. A spec's curves are h_TP then
            h_FP, those its formula needs (`spec_curves`); its band sets `tolerance`, its
            per_image sets group_size 1, and with class_reduction "present" its `absent` rule
            applies to the classes absent from the group's GT.
        theta: flat control-point vector in the reference layout (12 numbers for miou, fwiou,
            biou: h_I then h_U; 6 for macc, gacc; 8 for bf1: h1..h4; 6 per curve of a spec;
            more with more pieces per curve), or a preset name (`identity`, `asl-voc-miou`,
            ...).
        num_classes: C, the number of logit channels.
        ignore_index: label of void pixels; they influence neither value nor gradient (bf1 uses
            them only to locate GT edges next to void, as the reference does).
        tolerance: boundary tolerance r in pixels (biou band, bf1 matching), square (2r+1)^2;
            a spec with a band uses its band instead.
        drop_background: leave class 0 out of the biou trimap / the bf1 class mean. None = the
            reference default (biou and specs with a band True, bf1 False).
        eps: the reference's 1e-8.
        class_reduction: "all" averages miou/biou/macc over all C classes (reference: classes
            absent from the batch count as 0); "present" averages over classes present in the
            batch GT. fwiou, gacc and bf1 already weight by presence.
        per_image: compute the surrogate per image and average over images (reference: pooled
            over the batch). The same as group_size=1.
        group_size: G, compute the surrogate per group of G images and average over the groups
            (None: the whole batch pooled). The reference pooled the 8 images of each GPU, so its
            loss changed with the batch per process; with a group size it does not. Image j of
            a batch of n belongs to group j mod (n // G). Under torch.distributed the groups are
            formed over the global batch: every process gathers the per-image class sums of all
            (a few KB; the backward sends each process the gradient of its own images), and
            image k of process r is image r + k * world_size of the global batch, as
            data.train_loader deals it. Any number of processes, even with a group spread
            over several, then gives the one-process loss, and DDP's gradient average the
            one-process gradient.
        sync: all-reduce the per-class sums across torch.distributed processes before the ratio,
            so every process sees the surrogate of the global batch. The backward all-reduces too,
            so DDP's gradient averaging yields the gradient of the global loss. A no-op when no
            process group is initialised.
        region_weight: w >= 0, for biou, bf1 and specs with a band only: adds w * (1 - soft mIoU
            with identity curves), which stops a boundary loss from collapsing region quality
            (A§6.2).
        ce_weight: l in [0, 1]: the loss becomes (1 - l) * (the above) + l * cross-entropy (mean
            over valid pixels); 0 is the reference objective. The Jaccard-loss literature reports
            mixes near 0.25 CE : 0.75 surrogate doing best (search.ce_mix searches l).
        debug: check label values and a finite loss on every call (they wait for the GPU);
            otherwise on the first call only. None: SLS_DEBUG=1 in the environment.

    Shape:
        logits (N, C, H, W) at label size, any float dtype (computed in >= float32, also under
        autocast); target (N, H, W) integer. Returns a 0-dim tensor.
    """

    def __init__(
        self,
        metric: "str | MetricSpec | dict",
        theta: str | Sequence[float],
        num_classes: int,
        ignore_index: int = 255,
        tolerance: int = 5,
        drop_background: bool | None = None,
        eps: float = 1e-8,
        class_reduction: str = "all",
        per_image: bool = False,
        sync: bool = False,
        region_weight: float = 0.0,
        group_size: int | None = None,
        ce_weight: float = 0.0,
        debug: bool | None = None,
    ):
        super().__init__()
        spec = _spec_of(metric)  # None for the six hand-written surrogates
        curves = METRIC_CURVES[metric] if spec is None else len(spec_curves(spec))
        if isinstance(theta, str):
            theta = preset_theta(theta, metric) if spec is None else spec_theta(theta, spec)
        check_theta(theta, curves)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not isinstance(tolerance, int) or tolerance < 0:
            raise ValueError(f"tolerance must be an integer >= 0 pixels, got {tolerance!r}")
        if class_reduction not in CLASS_REDUCTIONS:
            raise unknown_name("class_reduction", class_reduction, CLASS_REDUCTIONS)
        band = spec is not None and spec.band > 0
        boundary = band if spec is not None else metric in BOUNDARY_METRICS
        name = metric if spec is None else spec.name
        if region_weight < 0 or (region_weight > 0 and not boundary):
            raise ValueError(
                f"region_weight={region_weight} is for the boundary metrics biou and bf1 and "
                f"specs with a band (a weight >= 0); metric is {name}"
            )
        if not 0 <= ce_weight <= 1:
            raise ValueError(f"ce_weight must be in [0, 1], got {ce_weight}")
        if spec is not None and spec.images == "per_image":
            if group_size not in (None, 1):
                raise ValueError(f"metric '{name}' is per_image: group_size 1, not {group_size}")
            per_image = True
        if per_image:
            if group_size not in (None, 1):
                raise ValueError(f"per_image=True is group_size=1, not {group_size}")
            group_size = 1
        if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
            raise ValueError(f"group_size must be a positive integer or None, got {group_size!r}")
        if sync and group_size is not None:
            raise ValueError(
                "sync=True pools class sums across processes; per_image / group_size compute "
                "the surrogate per group of images, which has nothing to pool"
            )
        self.metric = name
        self.spec = spec
        self.curves = None if spec is None else spec_curves(spec)  # the tables' order
        self.theta = [float(v) for v in theta]
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.tolerance = spec.band if band else tolerance
        if drop_background is None:
            drop_background = (
                band if spec is not None else _DEFAULT_DROP_BACKGROUND.get(metric, False)
            )
        self.drop_background = bool(drop_background)
        self.eps = eps
        self.class_reduction = class_reduction
        self.group_size = group_size
        self.sync = sync
        self.region_weight = float(region_weight)
        self.ce_weight = float(ce_weight)
        self.debug = debug_default() if debug is None else debug
        self.values_checked = False
        tables = torch.stack(curve_tables(self.theta, curves))
        self.register_buffer("tables", tables, persistent=False)  # (curves, pieces, 7)

    @classmethod
    def from_file(
        cls, path: str | Path, num_classes: int | None = None, **overrides
    ) -> "SurrogateLoss":
        """Build the loss from a searched-parameter YAML (what search exports, retrain reads).

        The file holds a `loss:` mapping with `name: surrogate`, `metric`, `theta` (control
        points) and optionally any other constructor argument, `num_classes` included.
        Keyword arguments override the file."""
        import yaml  # optional dependency: surrogates/ otherwise needs torch only

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"searched-loss file not found: {path}")
        with open(path) as f:
            doc = yaml.safe_load(f)
        section = doc.get("loss") if isinstance(doc, dict) else None
        if not isinstance(section, dict):
            raise ValueError(f"{path}: expected a 'loss:' mapping with metric and theta")
        kwargs = dict(section)
        name = kwargs.pop("name", "surrogate")
        if name != "surrogate":
            raise ValueError(f"{path}: loss.name is '{name}', not 'surrogate'")
        allowed = set(cls.__init__.__code__.co_varnames[1 : cls.__init__.__code__.co_argcount])
        for key in kwargs:
            if key not in allowed:
                raise unknown_name(f"key in {path} loss:", key, allowed)
        for key in ("metric", "theta"):
            if key not in kwargs:
                raise ValueError(f"{path}: loss.{key} is missing")
        kwargs.update(overrides)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if "num_classes" not in kwargs:
            raise ValueError(f"{path}: num_classes is neither in the file nor given")
        return cls(**kwargs)

    def extra_repr(self) -> str:
        return (
            f"metric={self.metric}, num_classes={self.num_classes}, "
            f"theta={[round(v, 4) for v in self.theta]}"
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_values = self.debug or not self.values_checked  # surrogates/checks.py
        check_logits_target(logits, target, self.num_classes, self.ignore_index, check_values)
        # The loss is computed in float32 or better even under autocast (A§8.2).
        with torch.autocast(logits.device.type, enabled=False):
            z = logits if logits.dtype == torch.float64 else logits.float()
            valid = target != self.ignore_index
            labels = torch.where(valid, target, 0).long()
            if self.spec is not None:
                weight = valid & self._trimap(labels, valid) if self.spec.band else valid
                loss = 1 - self._spec(z, labels, weight)
            elif self.metric == "bf1":
                loss = 1 - self._bf1(z, labels, valid)
            elif self.metric in ("macc", "gacc"):
                loss = 1 - self._accuracy(z, labels, valid)
            else:
                weight = valid if self.metric != "biou" else valid & self._trimap(labels, valid)
                fw = self.metric == "fwiou"
                loss = 1 - self._iou(z, labels, weight, self.tables[0], self.tables[1], fw)
            if self.region_weight > 0:
                loss = loss + self.region_weight * (1 - self._iou(z, labels, valid, None, None))
            if self.ce_weight > 0:
                ce = F.cross_entropy(z, target.long(), ignore_index=self.ignore_index)
                loss = (1 - self.ce_weight) * loss + self.ce_weight * ce
        if check_values and not torch.isfinite(loss):
            check_finite(logits, loss)
        self.values_checked = True
        return loss

    # --- pieces -------------------------------------------------------------------------------

    def _world_size(self) -> int:
        """Processes the loss spans: those of torch.distributed with sync or a group size."""
        if not self.sync and self.group_size is None:
            return 1
        import torch.distributed as dist  # only these options need it

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _by_group(self, per_image: torch.Tensor) -> torch.Tensor:
        """(N, C) per-image sums -> (G, C) per-group sums over the global batch (group_size);
        without a group size the (1, C) batch sums."""
        if self.group_size is None:
            return per_image.sum(0, keepdim=True)
        n, world_size = per_image.shape[0], self._world_size()
        image = torch.arange(n, device=per_image.device)
        if world_size > 1:
            per_image = _AllGather.apply(per_image)  # (world_size * N, C), rank after rank
            rank = torch.arange(world_size, device=image.device).unsqueeze(1)
            image = (rank + world_size * image).reshape(-1)  # global positions, rank stride
        groups = max(1, per_image.shape[0] // self.group_size)
        sums = per_image.new_zeros(groups, per_image.shape[1])
        return sums.index_add(0, image % groups, per_image)

    def _class_sums(self, labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Sum `values` (N, ...) per GT class and group -> (G, C); G = 1 without a group size."""
        n, c = labels.shape[0], self.num_classes
        index = labels.reshape(n, -1)
        if self.group_size is None:  # pooled over the batch at once
            sums = values.new_zeros(c).index_add(0, index.reshape(-1), values.reshape(-1))
            return sums.unsqueeze(0)
        index = index + c * torch.arange(n, device=labels.device).unsqueeze(1)
        sums = values.new_zeros(n * c).index_add(0, index.reshape(-1), values.reshape(-1))
        return self._by_group(sums.view(n, c))

    def _sync(self, *sums: torch.Tensor) -> list[torch.Tensor]:
        """sync=True: the sums of every process (a group size gathers in _by_group instead)."""
        if not self.sync or self._world_size() == 1:
            return list(sums)
        return [_AllReduceSum.apply(s) for s in sums]

    def _reduce_classes(self, ratio: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """(G, C) per-class ratios -> scalar: class mean per group, then mean over groups."""
        present = (count > 0).to(ratio.dtype)
        if self.class_reduction == "all":
            per_group = ratio.mean(dim=1)
        else:
            per_group = (ratio * present).sum(1) / present.sum(1).clamp(min=1)
        return _mean_over_groups(per_group, present.sum(1) > 0)

    def _iou(self, z, labels, weight, table_i, table_u, by_frequency=False) -> torch.Tensor:
        """miou / biou surrogate, fwiou with by_frequency; identity curves for None tables."""
        n, c = z.shape[:2]
        labels = labels.reshape(n, -1)  # (N, P)
        weight = weight.to(z.dtype).reshape(n, -1)
        # (N, C): sum_i m h_U(p_c), and (N, P) the probability of each pixel's GT class
        soft_all, p_gt = _SoftmaxSums.apply(z.reshape(n, c, -1), labels, weight, table_u)
        h_i_gt = p_gt if table_i is None else bezier(p_gt, table_i)
        h_u_gt = p_gt if table_u is None else bezier(p_gt, table_u)
        soft_all = self._by_group(soft_all)  # (G, C)
        inter = self._class_sums(labels, h_i_gt * weight)
        count = self._class_sums(labels, weight)
        # on GT pixels the union term is exactly 1, elsewhere h_U(p_c)
        soft_gt = self._class_sums(labels, h_u_gt * weight)
        inter, count, soft_all, soft_gt = self._sync(inter, count, soft_all, soft_gt)
        union = count + soft_all - soft_gt + self.eps
        ratio = inter / union
        if by_frequency:
            per_group = (count * ratio).sum(1) / count.sum(1).clamp(min=self.eps)
            return _mean_over_groups(per_group, count.sum(1) > 0)
        return self._reduce_classes(ratio, count)

    def _accuracy(self, z, labels, valid) -> torch.Tensor:
        """macc / gacc surrogate: the curve is needed at the GT channel only."""
        n, c = z.shape[:2]
        _, p_gt = _SoftmaxSums.apply(z.reshape(n, c, -1), labels.reshape(n, -1), None, None)
        weight = valid.to(z.dtype).reshape(n, -1)
        hits = self._class_sums(labels, bezier(p_gt, self.tables[0]) * weight)
        count = self._class_sums(labels, weight)
        hits, count = self._sync(hits, count)
        if self.metric == "gacc":
            per_group = hits.sum(1) / (count.sum(1) + self.eps)
            return _mean_over_groups(per_group, count.sum(1) > 0)
        return self._reduce_classes(hits / (count + self.eps), count)

    def _spec(self, z, labels, weight) -> torch.Tensor:
        """A metric spec's surrogate: the soft counts as the miou surrogate builds them (h_FP
        over every channel only when the formula reads fp or tn), the formula with eps in
        its count denominators, the spec's reduction per group, then the mean over groups."""
        n, c = z.shape[:2]
        labels = labels.reshape(n, -1)  # (N, P)
        weight = weight.to(z.dtype).reshape(n, -1)
        table = dict(zip(self.curves, self.tables, strict=True))
        dense_weight = weight if "fp" in table else None  # no union curve, no dense sums
        # (N, C): sum_i m h_FP(p_c), and (N, P) the probability of each pixel's GT class
        soft_all, p_gt = _SoftmaxSums.apply(
            z.reshape(n, c, -1), labels, dense_weight, table.get("fp")
        )
        count = self._class_sums(labels, weight)  # (G, C) GT pixels |Y_c|
        tp = soft_all_g = soft_gt = torch.zeros_like(count)
        if "tp" in table:
            tp = self._class_sums(labels, bezier(p_gt, table["tp"]) * weight)
        if "fp" in table:  # FP_c = all of h_FP(p_c) minus its GT pixels' part
            soft_all_g = self._by_group(soft_all)
            soft_gt = self._class_sums(labels, bezier(p_gt, table["fp"]) * weight)
        tp, count, soft_all_g, soft_gt = self._sync(tp, count, soft_all_g, soft_gt)
        fp = soft_all_g - soft_gt
        fn = count - tp
        tn = count.sum(1, keepdim=True) - count - fp
        counts = torch.stack([tp, fp, fn, tn], -1)  # (G, C, 4)
        # "all": every class is in the mean (softmax mass is never exactly 0, so no class is
        # absent from GT and soft prediction: the reference's mean over all C); "present":
        # classes without GT pixels in the group are absent, and the spec's rule applies
        absent = count == 0 if self.class_reduction == "present" else torch.zeros_like(count) > 0
        value, defined = reduce_counts(self.spec, counts, absent, eps_divide(self.eps))
        return _mean_over_groups(value, defined & (count.sum(1) > 0))

    def _trimap(self, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """GT band: edges of (foreground) classes dilated by the tolerance (A§2.4). No gradient."""
        edges = _gt_edges(labels, valid, self.num_classes)
        if self.drop_background:
            edges &= labels != 0
        return dilate_or(edges, self.tolerance)

    def _bf1(self, z, labels, valid) -> torch.Tensor:
        """Boundary F1 surrogate (A§2.7). No void mask, as in the reference and the metric."""
        n, c = z.shape[:2]
        edges = _gt_edges(labels, valid, c)  # (N, H, W), no gradient
        near_gt = dilate_or(class_bits(labels, edges, c), self.tolerance)  # GT edge classes <= r
        if _dense_recall(z.device):
            sums = self._bf1_sums_dense(z, labels, edges, near_gt)
        else:
            sums = self._bf1_sums_sparse(z, labels, edges, near_gt)
        sums = [self._by_group(s) for s in sums]
        n_gt, n_pr, match_pr, match_gt = self._sync(*sums)
        precision = match_pr / (n_pr + self.eps)
        recall = match_gt / (n_gt + self.eps)
        f1 = 2 * precision * recall / (precision + recall + self.eps)
        present = n_gt > 0
        if self.drop_background:
            present[:, 0] = False
        present = present.to(f1.dtype)
        # No GT edge at all: S = 0 with zero gradient (the reference returns NaN).
        per_group = (f1 * present).sum(1) / present.sum(1).clamp(min=1)
        return _mean_over_groups(per_group, present.sum(1) > 0)

    def _bf1_sums_sparse(self, z, labels, edges, near_gt) -> list[torch.Tensor]:
        """(N, C) n_gt, n_pr, match_pr, match_gt from the GT edge pixels' list (CPU): the
        recall's window maxima at those pixels alone, for the classes with GT edges alone."""
        n, c = z.shape[:2]
        image, y, x = edges.nonzero(as_tuple=True)
        edge_class = labels[image, y, x]
        n_gt = torch.bincount(image * c + edge_class, minlength=n * c).view(n, c).to(z.dtype)
        # Only classes with a GT edge somewhere in the batch (of every process the loss spans)
        # enter the class mean, and a class's soft edges depend on its own channel alone: the
        # others are skipped (a VOC image holds 2-3 of the 21 classes).
        with_edges = n_gt.sum(0)
        if self._world_size() > 1:
            import torch.distributed as dist

            dist.all_reduce(with_edges)
        with_edges = with_edges > 0
        if not with_edges.any():  # no GT edge: S = 0 below; keep the kernels' usual shapes
            with_edges[:] = True
        classes = with_edges.nonzero().squeeze(1)
        slot = torch.cumsum(with_edges, 0) - 1  # class -> its position in classes
        pair = image * len(classes) + slot[edge_class]  # (image, slot) of each GT edge pixel
        sums = _SoftBoundarySums.apply(z, self.tables, near_gt, classes, pair, y, x, self.tolerance)
        return [n_gt, *(z.new_zeros(n, c).index_copy(1, classes, s) for s in sums)]

    def _bf1_sums_dense(self, z, labels, edges, near_gt) -> list[torch.Tensor]:
        """The same sums with nothing that waits for the GPU (nonzero, bincount and any would,
        ~8 times a step): every class, and the recall's window maxima over the whole soft-edge
        maps (max_pool2d, as the reference computes them), read at the GT edge pixels."""
        n, c = z.shape[:2]
        class_of = torch.arange(c, device=z.device).view(1, c, 1, 1)
        gt_edges = edges.unsqueeze(1) & (labels.unsqueeze(1) == class_of)  # (N, C, H, W)
        n_gt = gt_edges.sum((2, 3)).to(z.dtype)
        classes, nothing = class_of.view(c), labels.new_zeros(0)
        sums = _SoftBoundarySums.apply(
            z, self.tables, near_gt, classes, nothing, nothing, nothing, self.tolerance, gt_edges
        )
        return [n_gt, *sums]


def _spec_of(metric: "str | MetricSpec | dict") -> MetricSpec | None:
    """None for the six hand-written surrogates, else the metric spec `metric` names."""
    if isinstance(metric, str) and metric in METRICS:
        return None
    if isinstance(metric, str) and metric not in BUILTIN_SPECS:
        if not metric.endswith((".yaml", ".yml")):
            raise unknown_name("metric", metric, {*METRICS, *BUILTIN_SPECS})
    return as_spec(metric)


def _dense_recall(device: torch.device) -> bool:
    """bf1's sums without a host sync (`_bf1_sums_dense`) off the CPU, where a sync stalls the
    GPU's queue; on the CPU the sparse sums do less work and nothing waits."""
    return device.type != "cpu"


def _mean_over_groups(per_group: torch.Tensor, has_data: torch.Tensor) -> torch.Tensor:
    """Mean over groups (of group_size images, else the one batch) that hold any data; 0 if
    none does, which gives loss 1 with zero gradient (the reference's empty-band behaviour)."""
    has_data = has_data.to(per_group.dtype)
    return (per_group * has_data).sum() / has_data.sum().clamp(min=1)


def _gt_edges(labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) GT edge pixels: void is one extra label, so class pixels next to void count."""
    return label_edges(compact_labels(torch.where(valid, labels, num_classes), num_classes)) & valid


def _softmax(z):
    return torch.softmax(z, 1)


def _erode(p):
    """3x3 erosion (min filter) of each channel, pixels outside the image ignored, and which
    window entry (row-major, `_WINDOW_3X3`) is each window's first minimum: the one the
    reference's max_pool2d picks, and the only one its gradient reaches. The entry is a float
    (0-8): inductor's integer selects run 2x slower here."""
    h, w = p.shape[-2:]
    padded = F.pad(p, (1, 1, 1, 1), value=float("inf"))
    entries = [padded[..., dy : dy + h, dx : dx + w] for dy, dx in _WINDOW_3X3]
    e = entries[0]
    for there in entries[1:]:
        e = torch.minimum(e, there)
    first_min = torch.full_like(e, len(entries) - 1)
    for i in reversed(range(len(entries) - 1)):  # the lowest entry equal to e wins
        first_min = torch.where(entries[i] == e, float(i), first_min)
    return e, first_min


def _soft_edges(p, e, tables):
    """The soft edges of A§2.7, B = h3(p) + h4(e) - h3(p) h4(e) - h1(p) h2(e), and dB/dp, dB/de,
    elementwise in one fused pass (1-D inputs)."""
    h1, d1 = bezier_value_and_slope(p, tables[0])
    h2, d2 = bezier_value_and_slope(e, tables[1])
    h3, d3 = bezier_value_and_slope(p, tables[2])
    h4, d4 = bezier_value_and_slope(e, tables[3])
    edges = h3 + h4 - h3 * h4 - h1 * h2
    return edges, d3 * (1 - h4) - d1 * h2, d4 * (1 - h3) - h1 * d2


def _edge_sums(edges, near_gt, classes):
    """Per (image, class): n_pr = sum B and match_pr = sum B [a GT edge of the class <= r]."""
    near = class_mask(near_gt, classes).to(edges.dtype)
    return edges.sum((2, 3)), (edges * near).sum((2, 3))


def _window_max(padded_edges, first, offsets):
    """For each GT edge pixel: the max of its class's soft edges over the square window, and
    where it is (the first in row-major order on ties, as max_pool2d picks). padded_edges: B
    padded by r with -inf, flattened; first: each window's top-left flat index; offsets: the
    window's flat offsets. Only the GT edge pixels, not all (N, C, H, W): recall needs no more."""
    index = first.unsqueeze(1) + offsets
    best, where = padded_edges[index].max(1)
    return best, index.gather(1, where.unsqueeze(1)).squeeze(1)


def _soft_edges_backward(
    p, first_min, grad_p, grad_e, near_gt, classes, g_n_pr, g_match_pr, g_recall, p_all
):
    """dLoss/dz from dLoss/dB = g_n_pr + g_match_pr [GT edge <= r] + g_recall (scattered to the
    window maxima), through B(p, e(p)) and p = softmax(z) at channels `classes` (p_all: every
    channel, or None when classes are all). The erosion's gradient goes to each window's first
    minimum (first_min, from `_erode`)."""
    h, w = p.shape[-2:]
    near = class_mask(near_gt, classes).to(p.dtype)
    g_edges = g_n_pr.unsqueeze(-1).unsqueeze(-1) + g_match_pr.unsqueeze(-1).unsqueeze(-1) * near
    g_edges = g_edges + g_recall
    # pixel (y, x) is the (dy, dx) entry of the window of (y + 1 - dy, x + 1 - dx) and gets
    # that window's gradient if it is its first minimum (pad: -1, no window entry)
    first_padded = F.pad(first_min, (1, 1, 1, 1), value=-1.0)
    g_e_padded = F.pad(g_edges * grad_e, (1, 1, 1, 1))
    grad = g_edges * grad_p
    for i, (dy, dx) in enumerate(_WINDOW_3X3):
        first_there = first_padded[..., 2 - dy : 2 - dy + h, 2 - dx : 2 - dx + w]
        g_there = g_e_padded[..., 2 - dy : 2 - dy + h, 2 - dx : 2 - dx + w]
        grad = grad + torch.where(first_there == i, g_there, 0.0)
    # through the softmax, to the logits: p_c (g_c - sum_k p_k g_k), g = 0 off `classes`
    weighted = (p * grad).sum(1, keepdim=True)
    if p_all is None:
        return p * (grad - weighted)
    return p_all * (torch.zeros_like(p_all).index_copy(1, classes, grad) - weighted)


_WINDOW_3X3 = tuple((dy, dx) for dy in range(3) for dx in range(3))
_fused_softmax = fused(_softmax)
_fused_erode = fused(_erode)
_fused_soft_edges = fused(_soft_edges)
_fused_edge_sums = fused(_edge_sums)
_fused_window_max = fused(_window_max)
_fused_soft_edges_backward = fused(_soft_edges_backward)


def _softmax_sums(z, labels, weight, table):
    """(N, C, P) logits -> log-sum-exp (N, P), the GT-class probability (N, P) and, with a
    weight, sum_i weight_i h(p_ic) per (image, class) (identity h for no table). Nothing of
    size (N, C, P) is returned: backward recomputes p from z and the log-sum-exp."""
    lse = torch.logsumexp(z, 1)
    p_gt = torch.exp(z.gather(1, labels.unsqueeze(1)).squeeze(1) - lse)
    if weight is None:
        return lse, p_gt, None
    p = torch.exp(z - lse.unsqueeze(1))
    h = p if table is None else bezier_value_and_slope(p, table)[0]
    return lse, p_gt, (h * weight.unsqueeze(1)).sum(2)


def _softmax_sums_backward(z, lse, labels, weight, table, g_sums, g_p_gt):
    """dLoss/dz: the softmax backward p (g - sum_k p_k g_k) of dLoss/dp_c = g_sums_c weight
    h'(p_c) + [c = GT] g_p_gt, with p recomputed from z and the log-sum-exp."""
    p = torch.exp(z - lse.unsqueeze(1))
    is_gt = torch.arange(z.shape[1], device=z.device).view(1, -1, 1) == labels.unsqueeze(1)
    g_p = torch.where(is_gt, g_p_gt.unsqueeze(1), 0.0)
    if weight is not None:
        slope = 1.0 if table is None else bezier_value_and_slope(p, table)[1]
        g_p = g_p + g_sums.unsqueeze(2) * weight.unsqueeze(1) * slope
    return p * (g_p - (p * g_p).sum(1, keepdim=True))


_fused_softmax_sums = fused(_softmax_sums)
_fused_softmax_sums_backward = fused(_softmax_sums_backward)


class _SoftmaxSums(torch.autograd.Function):
    """z -> (sum_i weight_i h(softmax(z)_ic) per image and class, softmax(z) at the GT class),
    the softmax and the curve fused, with a hand-written backward that keeps the logits and the
    log-sum-exp only (no probabilities, no curve slopes): the region surrogates' dense part.
    With the curve, both run on a few images at a time (`_image_chunks`)."""

    @staticmethod
    def forward(ctx, z, labels, weight, table):
        # the curve over every channel is what writes intermediates the size of z; without it
        # (macc, gacc) one call is faster
        ctx.chunks = [slice(None)] if weight is None else _image_chunks(z, _REGION_CHUNK_ELEMENTS)
        parts = [
            _fused_softmax_sums(z[i], labels[i], None if weight is None else weight[i], table)
            for i in ctx.chunks
        ]
        lse, p_gt, sums = (_joined(part) for part in zip(*parts, strict=True))
        ctx.table = table
        ctx.save_for_backward(z, lse, labels, weight)
        return sums, p_gt

    @staticmethod
    def backward(ctx, g_sums, g_p_gt):
        z, lse, labels, weight = ctx.saved_tensors
        grad = [
            _fused_softmax_sums_backward(
                z[i],
                lse[i],
                labels[i],
                None if weight is None else weight[i],
                ctx.table,
                None if g_sums is None else g_sums[i],
                g_p_gt[i],
            )
            for i in ctx.chunks
        ]
        return _joined(grad), None, None, None


def _joined(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The chunks' results along the batch: no copy for one chunk, None for None."""
    if parts[0] is None:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def _image_chunks(z: torch.Tensor, elements: int) -> list[slice]:
    """On CPU, slices of whole images of about `elements` logits each. Inductor's
    kernels write intermediates the size of their input (the probabilities, the curve's root);
    kept to a few MB, the allocator reuses them and they stay in cache, where fresh N x C x H x W
    buffers cost page faults (README, Performance). Each image's sums are its own, so the values
    are the same up to rounding (a compiled reduction may add in another order for another
    batch size). Chunks differ by one image at most, so that a chunk of one (a recompilation)
    is rare."""
    n = len(z)
    if z.device.type != "cpu":  # the caching allocator reuses GPU memory anyway
        return [slice(0, n)]
    count = min(n, max(1, -(-z.numel() // elements)))
    bounds = [i * n // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


_REGION_CHUNK_ELEMENTS = 2**20
_BOUNDARY_CHUNK_ELEMENTS = 2**22  # bf1's per-call costs are higher: 8 x 21 x 128^2 is one call


def _boundary_sums(
    z, tables, near_gt, classes, pair, y, x, radius: int, subset: bool, gt_edges=None
):
    """The forward of `_SoftBoundarySums` on some images: (n_pr, match_pr, match_gt) and what
    backward keeps (p_all, first_min, grad_p, grad_e, argmax). The recall's window maxima at
    the GT edge pixels (pair, y, x), or with `gt_edges` (N, C, H, W) over every pixel, read at
    those of gt_edges."""
    n, c = len(z), len(classes)
    p_all = _fused_softmax(z)
    p = p_all.index_select(1, classes) if subset else p_all
    e, first_min = _fused_erode(p)
    edges, grad_p, grad_e = _fused_soft_edges(p.reshape(-1), e.reshape(-1), tables)
    edges = edges.view_as(p)
    n_pr, match_pr = _fused_edge_sums(edges, near_gt, classes)
    if gt_edges is not None:  # argmax: flat index in each (image, class) plane
        best, argmax = F.max_pool2d(edges, 2 * radius + 1, 1, radius, return_indices=True)
        match_gt = (best * gt_edges).sum((2, 3))
        return (n_pr, match_pr, match_gt), (p_all, first_min, grad_p, grad_e, argmax)
    # recall needs max_window B at each GT edge pixel, for its own class
    h, w = p.shape[-2:]
    hp, wp = h + 2 * radius, w + 2 * radius
    padded = F.pad(edges, (radius,) * 4, value=float("-inf"))
    first = (pair * hp + y) * wp + x  # the window of (y, x) starts there
    k = torch.arange(2 * radius + 1, device=p.device)
    offsets = (k.unsqueeze(1) * wp + k).reshape(-1)  # row-major window order
    best, argmax = _fused_window_max(padded.view(-1), first, offsets)
    # flat index in padded B -> in B
    argmax = (
        (argmax // (hp * wp)) * (h * w)
        + (argmax % (hp * wp) // wp - radius) * w
        + (argmax % wp - radius)
    )
    match_gt = p.new_zeros(n * c).index_add_(0, pair, best).view(n, c)
    # p of the K classes is taken from p_all again in backward rather than kept
    return (n_pr, match_pr, match_gt), (p_all, first_min, grad_p, grad_e, argmax)


def _boundary_sums_backward(
    saved, near_gt, classes, pair, subset: bool, g_n_pr, g_match_pr, g_match_gt, gt_edges=None
):
    """dLoss/dz of `_boundary_sums` on the same images."""
    p_all, first_min, grad_p, grad_e, argmax = saved
    p = p_all.index_select(1, classes) if subset else p_all
    g_recall = torch.zeros_like(p).view(-1)  # each GT edge pixel's, at its window's max
    if gt_edges is not None:
        g_gt = g_match_gt.unsqueeze(-1).unsqueeze(-1) * gt_edges  # (N, C, H, W)
        g_recall = g_recall.view(*p.shape[:2], -1)
        g_recall.scatter_add_(2, argmax.flatten(2), g_gt.flatten(2))
    else:
        g_recall.index_add_(0, argmax, g_match_gt.reshape(-1)[pair])
    return _fused_soft_edges_backward(
        p, first_min, grad_p.view_as(p), grad_e.view_as(p), near_gt, classes,
        g_n_pr, g_match_pr, g_recall.view_as(p), p_all if subset else None,
    )  # fmt: skip


class _SoftBoundarySums(torch.autograd.Function):
    """z -> per (image, class) n_pr, match_pr, match_gt of the bf1 surrogate for the classes
    given, with a hand-written backward: it keeps p = softmax(z), each erosion window's first
    minimum, dB/dp and dB/de of those classes, and the index of each GT edge pixel's window
    maximum, instead of the eight curve tensors, the max-pool indices and the dilated maps
    autograd would keep. Large batches run a few images at a time (`_image_chunks`)."""

    @staticmethod
    def forward(ctx, z, tables, near_gt, classes, pair, y, x, radius, gt_edges=None):
        """Sums (N, K) for the K channels `classes`; pair = image * K + slot of a GT edge pixel,
        or, with gt_edges (N, K, H, W), the GT edge pixels of each class (see _boundary_sums)."""
        k = len(classes)
        ctx.subset = k < z.shape[1]
        ctx.chunks = _image_chunks(z, _BOUNDARY_CHUNK_ELEMENTS)
        ctx.pixels = [slice(None)]
        if len(ctx.chunks) > 1:  # GT edge pixels come image by image (nonzero's order)
            ends = [0, *torch.bincount(pair // k, minlength=len(z)).cumsum(0).tolist()]
            ctx.pixels = [slice(ends[i.start], ends[i.stop]) for i in ctx.chunks]
        sums, saved = [], []
        for images, pixels in zip(ctx.chunks, ctx.pixels, strict=True):
            chunk_sums, chunk_saved = _boundary_sums(
                z[images], tables, near_gt[images], classes, pair[pixels] - images.start * k,
                y[pixels], x[pixels], radius, ctx.subset,
                None if gt_edges is None else gt_edges[images],
            )  # fmt: skip
            sums.append(chunk_sums)
            saved += chunk_saved
        ctx.save_for_backward(near_gt, classes, pair, gt_edges, *saved)
        return tuple(_joined(s) for s in zip(*sums, strict=True))

    @staticmethod
    def backward(ctx, g_n_pr, g_match_pr, g_match_gt):
        near_gt, classes, pair, gt_edges, *saved = ctx.saved_tensors
        k, per_chunk = len(classes), len(saved) // len(ctx.chunks)
        grad = [
            _boundary_sums_backward(
                saved[j * per_chunk : (j + 1) * per_chunk],
                near_gt[images],
                classes,
                pair[pixels] - images.start * k,
                ctx.subset,
                g_n_pr[images],
                g_match_pr[images],
                g_match_gt[images],
                None if gt_edges is None else gt_edges[images],
            )
            for j, (images, pixels) in enumerate(zip(ctx.chunks, ctx.pixels, strict=True))
        ]
        return _joined(grad), *([None] * 8)


class _AllGather(torch.autograd.Function):
    """(N, ...) on each process -> (world_size * N, ...), rank after rank (equal N on every
    process). Backward: each process gets the summed gradient of its own rows, i.e. world_size
    times its share, so that DDP's averaging gives the global-loss gradient (as _AllReduceSum)."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes. Backward sums the (identical) upstream gradients, i.e. scales by the
    world size, so that DDP's averaging of parameter gradients gives the global-loss gradient."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad
