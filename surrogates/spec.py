"""Metric specs: a segmentation metric written as a formula over per-class counts.

A `MetricSpec` is counts, then a formula, then a reduction (STYLE rule 22):
    per_class   an arithmetic formula over tp fp fn tn and named constants
    classes     mean | weighted (by GT pixels) | micro (counts pooled over classes first)
    images      pooled (counts over the whole set) | per_image (the metric per image, then mean)
    present     gt_or_pred | gt: the counts that make a class present
    absent      skip | zero | one: what an absent class scores
    background  whether class 0 takes part in the class reduction
    band        0, or r > 0: counts on the GT boundary band only (GT edges dilated by r, biou's
                trimap)
One definition gives the exact metric (`SpecMetric`, surrogates/metrics.py: integer counts) and
its surrogate (`SurrogateLoss(metric=spec)`: soft counts of Bezier curves of probabilities).

Formulas are parsed with `ast` against a whitelist (numbers, names, + - * / **, unary minus,
min, max, sqrt) and turned into nested closures over torch tensors, so autograd runs through
them and nothing reaches eval. The one division rule is `x / 0 = 0` (torchmetrics'
zero_division=0); the surrogate divides by `denominator + eps` wherever the denominator holds a
count, as the built-in surrogates do.
"""

import ast
import functools
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from surrogates.checks import unknown_name
from surrogates.curves import PRESETS, identity_control, list_presets

COUNTS = ("tp", "fp", "fn", "tn")
FUNCTIONS = {"min": (2, None), "max": (2, None), "sqrt": (1, 1)}  # name -> (min, max) arguments
CLASS_REDUCTIONS = ("mean", "weighted", "micro")
IMAGE_REDUCTIONS = ("pooled", "per_image")
PRESENCE = ("gt_or_pred", "gt")
ABSENT_RULES = ("skip", "zero", "one")
_ABSENT_SCORE = {"zero": 0.0, "one": 1.0}
SPEC_PIECES = 2  # Bezier pieces per curve of a spec's surrogate, as the region metrics (A§3.1)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_IOU = "tp / (tp + fp + fn)"
_DICE = "2 * tp / (2 * tp + fp + fn)"

# The built-in metrics, each a spec (docs/metrics.md gives the formulas and why the defaults).
BUILTIN_SPECS: dict[str, dict] = {
    "dice": {"per_class": _DICE},
    # beta = 2: recall weighs 4x precision; beta = 1 would be `dice` again
    "fbeta": {
        "per_class": "(1 + beta**2) * tp / ((1 + beta**2) * tp + beta**2 * fn + fp)",
        "constants": {"beta": 2.0},
    },
    # alpha 0.3 on fp, beta 0.7 on fn: the best pair of Salehi et al. 2017; 0.5/0.5 is `dice`
    "tversky": {
        "per_class": "tp / (tp + alpha * fp + beta * fn)",
        "constants": {"alpha": 0.3, "beta": 0.7},
    },
    "precision": {"per_class": "tp / (tp + fp)"},
    "recall": {"per_class": "tp / (tp + fn)"},
    "specificity": {"per_class": "tn / (tn + fp)"},
    "balanced_accuracy": {"per_class": "(tp / (tp + fn) + tn / (tn + fp)) / 2"},
    "miou_image": {"per_class": _IOU, "images": "per_image"},
    "dice_image": {"per_class": _DICE, "images": "per_image"},
    # the paper's region metrics, equal to SegMetrics' (tests/test_metric_spec.py)
    "miou": {"per_class": _IOU},
    "fwiou": {"per_class": _IOU, "classes": "weighted"},
    "macc": {"per_class": "tp / (tp + fn)", "present": "gt"},
    "gacc": {"per_class": "tp / (tp + fn)", "classes": "micro"},
    "biou": {"per_class": _IOU, "band": 5},
}

# A division: (numerator, denominator, whether the denominator holds a count) -> quotient.
Divide = Callable[[object, object, bool], object]


def list_specs() -> list[str]:
    return sorted(BUILTIN_SPECS)


def safe_divide(a, b, counts: bool = True):
    """a / b with x / 0 = 0, elementwise; the gradient through a zero denominator is 0."""
    if not isinstance(b, torch.Tensor):
        return a / b if b != 0 else a * 0.0
    nonzero = b != 0
    return torch.where(nonzero, a / torch.where(nonzero, b, 1.0), 0.0)


def eps_divide(eps: float) -> Divide:
    """The surrogate's division: a / (b + eps) where b holds a count, else `safe_divide`."""

    def divide(a, b, counts: bool):
        return a / (b + eps) if counts else safe_divide(a, b)

    return divide


# --- formulas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Formula:
    """A parsed per-class formula: `evaluate(env, divide)` with env mapping names to tensors or
    numbers; `names` are the counts it reads."""

    text: str
    evaluate: Callable[[Mapping, Divide], object]
    names: frozenset[str]


def parse_formula(text: str, constants: Mapping[str, float], where: str) -> Formula:
    """Parse and check a formula; errors are one line, then the formula and a caret."""
    flat = " ".join(str(text).split())  # one line, so that the caret has a place
    try:
        tree = ast.parse(flat, mode="eval")
    except SyntaxError as error:  # the offset is 0 or past the end at an unexpected end
        column = error.offset if error.offset and error.offset <= len(flat) else len(flat) + 1
        message = "invalid syntax" + ("" if error.msg == "invalid syntax" else f" ({error.msg})")
        raise _formula_error(where, message, flat, column) from None
    valid = [*COUNTS, *constants, *FUNCTIONS]
    evaluate = _compile(tree.body, flat, where, valid)
    names = frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name)) & set(COUNTS)
    if not names:
        raise ValueError(f"{where} uses none of tp, fp, fn, tn: '{flat}'")
    unused = sorted(set(constants) - {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})
    if unused:
        raise ValueError(f"{where}: constant '{unused[0]}' is not used in '{flat}'")
    return Formula(flat, evaluate, names)


def _formula_error(where: str, message: str, text: str, column: int) -> ValueError:
    caret = " " * (column - 1) + "^"
    return ValueError(f"{where}, column {column}: {message}\n    {text}\n    {caret}")


def _operator_column(node: ast.BinOp, text: str) -> int:
    """1-based column of a binary operator: the first non-blank after the left operand that is
    not a closing parenthesis."""
    column = node.left.end_col_offset
    while column < len(text) and text[column] in " )":
        column += 1
    return column + 1


def _compile(node: ast.AST, text: str, where: str, valid: list[str]) -> Callable:
    """A closure (env, divide) -> value for a whitelisted node; anything else is an error."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = float(node.value)
        return lambda env, divide: value
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            message = f"'{node.id}' is a function: write {node.id}(...)"
            raise _formula_error(where, message, text, node.col_offset + 1)
        if node.id not in valid:
            message = str(unknown_name("name", node.id, valid))
            raise _formula_error(where, message, text, node.col_offset + 1)
        name = node.id
        return lambda env, divide: env[name]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _compile(node.operand, text, where, valid)
        if isinstance(node.op, ast.UAdd):
            return operand
        return lambda env, divide: -operand(env, divide)
    if isinstance(node, ast.BinOp):
        return _compile_binary(node, text, where, valid)
    if isinstance(node, ast.Call):
        return _compile_call(node, text, where, valid)
    what = type(node).__name__ if not isinstance(node, ast.Constant) else repr(node.value)
    message = f"{what} is not allowed (numbers, names, + - * / **, min, max, sqrt)"
    raise _formula_error(where, message, text, node.col_offset + 1)


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _compile_binary(node: ast.BinOp, text: str, where: str, valid: list[str]) -> Callable:
    left = _compile(node.left, text, where, valid)
    right = _compile(node.right, text, where, valid)
    if isinstance(node.op, ast.Div):
        # the surrogate adds eps to a denominator only where it holds a count
        counts = any(isinstance(n, ast.Name) and n.id in COUNTS for n in ast.walk(node.right))
        return lambda env, divide: divide(left(env, divide), right(env, divide), counts)
    if isinstance(node.op, ast.Pow):
        return lambda env, divide: _pow(left(env, divide), right(env, divide))
    if type(node.op) not in _BINARY:
        message = f"operator {type(node.op).__name__} is not allowed (+ - * / ** only)"
        raise _formula_error(where, message, text, _operator_column(node, text))
    op = _BINARY[type(node.op)]
    return lambda env, divide: op(left(env, divide), right(env, divide))


def _compile_call(node: ast.Call, text: str, where: str, valid: list[str]) -> Callable:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in FUNCTIONS or node.keywords:
        message = f"only min(a, b, ...), max(a, b, ...) and sqrt(x) may be called, not {name}"
        raise _formula_error(where, message, text, node.col_offset + 1)
    low, high = FUNCTIONS[name]
    if len(node.args) < low or (high is not None and len(node.args) > high):
        takes = "one argument" if high == 1 else "two or more arguments"
        raise _formula_error(where, f"{name} takes {takes}", text, node.col_offset + 1)
    args = [_compile(a, text, where, valid) for a in node.args]
    if name == "sqrt":
        return lambda env, divide: _sqrt(args[0](env, divide))
    pick = torch.minimum if name == "min" else torch.maximum
    return lambda env, divide: functools.reduce(
        lambda a, b: pick(_tensor(a, b), _tensor(b, a)), [arg(env, divide) for arg in args]
    )


def _tensor(x, like) -> torch.Tensor:
    """x as a tensor of like's dtype (numbers in min/max become 0-dim tensors)."""
    if isinstance(x, torch.Tensor):
        return x
    dtype = like.dtype if isinstance(like, torch.Tensor) else torch.float64
    device = like.device if isinstance(like, torch.Tensor) else None
    return torch.tensor(float(x), dtype=dtype, device=device)


def _sqrt(x):
    return torch.sqrt(x) if isinstance(x, torch.Tensor) else math.sqrt(x)


def _pow(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.pow(a, b)
    try:  # constants only; a complex or infinite result fails the finiteness check at load
        value = float(a) ** float(b)
    except ZeroDivisionError:
        return math.inf
    return value if isinstance(value, float) else math.nan


# --- the spec ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A metric as a formula over per-class counts and a reduction (module docstring,
    docs/metrics.md). Construction validates everything: the formula's syntax and names, the
    reductions, non-negative constants, and that the formula is non-decreasing in tp and tn
    and non-increasing in fp and fn (a metric to maximise), checked numerically."""

    name: str
    per_class: str
    constants: dict[str, float] = field(default_factory=dict)
    classes: str = "mean"
    images: str = "pooled"
    present: str = "gt_or_pred"
    absent: str = "skip"
    background: bool = True
    band: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"metric name {self.name!r} must be a word of letters, digits, _ . - "
                "(it names a result column)"
            )
        where = f"metric '{self.name}'"
        object.__setattr__(self, "constants", _checked_constants(self.constants, where))
        for key, valid in (
            ("classes", CLASS_REDUCTIONS),
            ("images", IMAGE_REDUCTIONS),
            ("present", PRESENCE),
            ("absent", ABSENT_RULES),
        ):
            if getattr(self, key) not in valid:
                raise ValueError(f"{where}: {unknown_name(key, getattr(self, key), valid)}")
        if not isinstance(self.background, bool):
            raise ValueError(
                f"background of {where} must be true or false, not {self.background!r}"
            )
        if type(self.band) is not int or self.band < 0:
            raise ValueError(f"band of {where} must be 0 or a width in pixels, not {self.band!r}")
        formula = parse_formula(self.per_class, self.constants, f"per_class of {where}")
        object.__setattr__(self, "_formula", formula)
        _check_monotone(self)

    def __reduce__(self):  # the parsed formula holds closures: pickle the plain dict instead
        return (spec_from_dict, (self.to_dict(),))

    def __hash__(self) -> int:  # constants is a dict: hash its sorted items
        items = tuple(sorted(self.constants.items()))
        return hash(
            tuple(items if f.name == "constants" else getattr(self, f.name) for f in fields(self))
        )

    @property
    def formula(self) -> Formula:
        return self._formula

    def to_dict(self) -> dict:
        """Every key as plain data (YAML files, the search's export file); `spec_from_dict`
        reads it back."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "constants": dict(self.constants)
        }


def _checked_constants(constants: object, where: str) -> dict[str, float]:
    if not isinstance(constants, Mapping):
        raise ValueError(f"constants of {where} must be a mapping of names to numbers")
    checked = {}
    for key, value in constants.items():
        if not isinstance(key, str) or not key.isidentifier() or key in (*COUNTS, *FUNCTIONS):
            raise ValueError(f"constant name {key!r} of {where} is not a free identifier")
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"constant {key} of {where} must be a number >= 0, got {value!r}")
        checked[key] = float(value)
    return checked


def _check_monotone(spec: MetricSpec) -> None:
    """Refuse a formula that falls when tp or tn grow or rises when fp or fn grow: at 2048
    random positive counts (each log-uniform over 1e-2 .. 1e6, float64), the autograd
    derivatives must have the right sign, and so must the change when one count is multiplied
    by 10 (which catches a jump across a pole, such as 1 / (1 - tn)), beyond rounding."""
    generator = torch.Generator().manual_seed(0)
    exponent = torch.rand(2048, 4, generator=generator, dtype=torch.float64)
    counts = (10 ** (8 * exponent - 2)).requires_grad_(True)  # (samples, 4) tp fp fn tn
    values = class_scores(spec, counts.unsqueeze(0))[0]  # the samples as classes
    where = f"per_class of metric '{spec.name}'"
    grads = torch.autograd.grad(values.sum(), counts, allow_unused=True)[0]
    grads = torch.zeros_like(counts) if grads is None else grads
    counts, values = counts.detach(), values.detach()
    finite = torch.isfinite(values) & torch.isfinite(grads).all(1)
    if not finite.all():
        raise ValueError(f"{where} is not finite at {_at(counts, int((~finite).nonzero()[0]))}")
    for index, name in enumerate(COUNTS):
        sign = 1.0 if name in ("tp", "tn") else -1.0
        step = counts.clone()
        step[:, index] *= 10
        stepped = class_scores(spec, step.unsqueeze(0))[0]
        tolerance = 1e-9 * torch.maximum(values.abs(), stepped.abs()).clamp(min=1e-12)
        slope = sign * grads[:, index] * counts[:, index]  # scale-free: d value / d log count
        wrong = (slope < -tolerance) | ~(sign * (stepped - values) >= -tolerance)
        if wrong.any():
            direction = "decreases as" if sign > 0 else "increases as"
            raise ValueError(
                f"{where} {direction} {name} grows (at {_at(counts, int(wrong.nonzero()[0]))}); "
                "a metric to maximise must be non-decreasing in tp and tn and non-increasing "
                "in fp and fn"
            )


def _at(counts: torch.Tensor, row: int) -> str:
    return ", ".join(f"{n}={float(v):.4g}" for n, v in zip(COUNTS, counts[row], strict=True))


# --- loading ----------------------------------------------------------------------------------


def spec_from_dict(doc: Mapping) -> MetricSpec:
    """A spec from plain data (a YAML mapping, `MetricSpec.to_dict()`); unknown keys are errors."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"a metric spec is a mapping of keys, got {type(doc).__name__}")
    keys = [f.name for f in fields(MetricSpec)]
    for key in doc:
        if key not in keys:
            raise unknown_name("key in metric spec", key, keys)
    for key in ("name", "per_class"):
        if key not in doc:
            raise ValueError(f"metric spec {dict(doc).get('name', '')!r} has no '{key}'")
    return MetricSpec(**{k: (dict(v or {}) if k == "constants" else v) for k, v in doc.items()})


def load_spec(metric: str | Path, **constants: float) -> MetricSpec:
    """A built-in spec by name, or a spec from a YAML file (its keys at the top level; name
    defaults to the file's stem), with constants overridden by keyword (`beta=1`)."""
    if isinstance(metric, str) and metric in BUILTIN_SPECS:
        doc = {"name": metric, **BUILTIN_SPECS[metric]}
    elif isinstance(metric, Path) or str(metric).endswith((".yaml", ".yml")):
        doc = _read_yaml(Path(metric))
    else:
        error = unknown_name("metric", metric, list_specs())
        raise ValueError(f"{error} (or a metric file ending in .yaml)")
    given = dict(doc.get("constants") or {})
    for key in constants:
        if key not in given:
            if not given:
                raise ValueError(f"metric '{doc.get('name')}' has no constants; got {key}")
            raise ValueError(f"metric '{doc.get('name')}': {unknown_name('constant', key, given)}")
    return spec_from_dict({**doc, "constants": {**given, **constants}})


def _read_yaml(path: Path) -> dict:
    import yaml  # optional dependency: surrogates/ otherwise needs torch only

    if not path.is_file():
        raise ValueError(f"metric file not found: {path}")
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping with per_class and the reduction keys")
    return {"name": path.stem, **doc}


def as_spec(metric: "str | Path | Mapping | MetricSpec") -> MetricSpec:
    """A spec from any of its forms: a spec, a plain dict, a built-in name or a YAML path."""
    if isinstance(metric, MetricSpec):
        return metric
    if isinstance(metric, Mapping):
        return spec_from_dict(metric)
    return load_spec(metric)


def spec_curves(spec: MetricSpec) -> tuple[str, ...]:
    """The searched curves of a spec's surrogate, in theta's order: "tp" (h_TP, at each
    pixel's GT class) when the formula reads tp or fn, "fp" (h_FP, over the other classes)
    when it reads fp or tn. Each is a curve of 2 pieces (6 numbers) by default, identity at
    the start (surrogates/curves.py)."""
    names = spec.formula.names
    return tuple(
        curve for curve, needs in (("tp", {"tp", "fn"}), ("fp", {"fp", "tn"})) if names & needs
    )


def spec_theta(preset: str, spec: MetricSpec) -> list[float]:
    """Control points of a named preset for a spec's surrogate: `identity` for its curves, or
    a published vector (e.g. asl-voc-miou for a two-curve spec: h_I, h_U play h_TP, h_FP)."""
    if preset == "identity":
        return identity_control(SPEC_PIECES) * len(spec_curves(spec))
    if preset not in PRESETS:
        raise unknown_name("preset", preset, list_presets())
    return list(PRESETS[preset])


# --- counts -> values -------------------------------------------------------------------------


def class_scores(spec: MetricSpec, counts: torch.Tensor, divide: Divide = safe_divide):
    """The formula per class: counts (..., C, 4) in the order tp fp fn tn -> (..., C)."""
    tp, fp, fn, tn = counts.unbind(-1)
    env = {"tp": tp, "fp": fp, "fn": fn, "tn": tn, **spec.constants}
    return torch.broadcast_to(spec.formula.evaluate(env, divide), tp.shape)


def absent_classes(spec: MetricSpec, counts: torch.Tensor) -> torch.Tensor:
    """(..., C) bool: classes absent from GT and prediction, or from GT with present: gt."""
    tp, fp, fn, _ = counts.unbind(-1)
    return (tp + fn == 0) if spec.present == "gt" else (tp + fp + fn == 0)


def reduce_counts(
    spec: MetricSpec, counts: torch.Tensor, absent: torch.Tensor, divide: Divide = safe_divide
) -> tuple[torch.Tensor, torch.Tensor]:
    """counts (..., C, 4) and absent (..., C) -> the metric (...) and whether it is defined (...)
    by the spec's class reduction: the exact metric and the surrogate share this."""
    if not spec.background:
        counts, absent = counts[..., 1:, :], absent[..., 1:]
    if spec.classes == "micro":  # one class of the pooled counts, absent if every class is
        counts, absent = counts.sum(-2, keepdim=True), absent.all(-1, keepdim=True)
    scores = class_scores(spec, counts, divide)
    if spec.classes == "weighted":  # absent classes weigh 0 whatever the rule
        weights = counts[..., 0] + counts[..., 2]  # GT pixels: tp + fn
        total = weights.sum(-1)
        return safe_divide((weights * scores).sum(-1), total), total > 0
    if spec.absent == "skip":
        kept = (~absent).to(scores.dtype)
        scores = torch.where(absent, 0.0, scores)
    else:
        kept = torch.ones_like(scores)
        scores = torch.where(absent, _ABSENT_SCORE[spec.absent], scores)
    number = kept.sum(-1)
    return (scores * kept).sum(-1) / number.clamp(min=1), number > 0


def class_values(spec: MetricSpec, counts: torch.Tensor) -> torch.Tensor:
    """Per-class exact values for reports: the formula, absent classes NaN (skip), 0 or 1."""
    scores = class_scores(spec, counts)
    fill = _ABSENT_SCORE.get(spec.absent, math.nan)
    return torch.where(absent_classes(spec, counts), fill, scores)
