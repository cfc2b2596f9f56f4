"""Monotone curves h: [0,1] -> [0,1] made of quadratic Bezier pieces, and the published presets.

A curve with `num_pieces` pieces runs from (0,0) to (1,1) through 2 * num_pieces - 1 free points,
stored flat as [x1, y1, x2, y2, ...] (SPEC A§3.1). Piece k goes from point 2k to point 2k + 2 with
point 2k + 1 as its control point; the end points (0,0) and (1,1) are implicit, which is the
truth-table constraint h(0) = 0, h(1) = 1.

Two coordinate systems (SPEC A§3.2):
- raw: what a search controller samples, any vector in [0,1]^D;
- control points: what losses and exported files use. `raw_to_control` maps raw values
  cumulatively per coordinate, c_k = c_{k-1} + raw_k * (1 - c_{k-1}), so x and y are each
  non-decreasing and h is monotone by construction.

A metric's theta is the concatenation of its curves (miou/fwiou/biou: h_I then h_U; macc/gacc: h;
bf1: h1..h4).
"""

from collections.abc import Sequence

import torch

from surrogates.fused import fused

# Number of curves in theta per metric (SPEC A§2.8) and the reference number of pieces (A§3.1).
METRIC_CURVES = {"miou": 2, "fwiou": 2, "biou": 2, "macc": 1, "gacc": 1, "bf1": 4}
DEFAULT_PIECES = {"miou": 2, "fwiou": 2, "biou": 2, "macc": 2, "gacc": 2, "bf1": 1}

# The published searched parameters, control points exactly as released (SPEC A§7).
_MACC = [2.1453928e-02, 7.3905742e-01, 4.1163361e-01, 7.9865617e-01, 9.1986191e-01, 9.5041156e-01]
PRESETS: dict[str, list[float]] = {
    # A§7.1: HEAD config miou_bezier_10k.py (h_I then h_U)
    "asl-voc-miou": [
        5.69728440e-04,
        6.43720450e-01,
        3.38589169e-01,
        7.05543360e-01,
        6.25281252e-01,
        7.79551927e-01,
        6.90375570e-01,
        1.30628900e-02,
        8.34170515e-01,
        9.62431815e-01,
        9.42998269e-01,
        9.80038125e-01,
    ],
    # A§7.3: the vector in fwiou_bezier_10k.log (the config file carries the BIoU vector by mistake)
    "asl-voc-fwiou": [
        0.11907931,
        0.669945,
        0.19315827,
        0.71179134,
        0.46337387,
        0.79494196,
        0.5266451,
        0.29869753,
        0.706645,
        0.4485701,
        0.86858255,
        0.7261703,
    ],
    "asl-voc-macc": _MACC,  # A§7.4
    "asl-voc-gacc": _MACC,  # A§7.6: no separately searched gAcc vector was published
    # A§7.5
    "asl-voc-biou": [
        3.65390355e-04,
        9.84171689e-01,
        9.69491959e-01,
        9.92340326e-01,
        9.88328516e-01,
        9.95552719e-01,
        3.54609758e-01,
        2.67221928e-01,
        5.60551465e-01,
        4.35290039e-01,
        5.65432191e-01,
        6.01448298e-01,
    ],
    # A§7.7: four one-piece curves h1..h4
    "asl-voc-bf1": [
        0.8113003373146057,
        0.8526162505149841,
        0.17164576053619385,
        0.03164796531200409,
        0.20997394621372223,
        0.44903290271759033,
        0.07847517728805542,
        0.8753038048744202,
    ],
}


def list_presets() -> list[str]:
    return sorted([*PRESETS, "identity"])


def identity_raw(num_pieces: int) -> list[float]:
    """Raw values of the identity curve: control points evenly spaced on the diagonal.

    For 2 pieces this is [1/4, 1/4, 1/3, 1/3, 1/2, 1/2], the reference initialisation (A§3.5,
    which writes 1/3 as 0.3333)."""
    num_points = 2 * num_pieces - 1
    # c_j = j / (2 * num_pieces)  <=>  raw_j = 1 / (2 * num_pieces - j + 1)
    return [1.0 / (num_points + 2 - j) for j in range(1, num_points + 1) for _ in range(2)]


def identity_control(num_pieces: int) -> list[float]:
    return [j / (2 * num_pieces) for j in range(1, 2 * num_pieces) for _ in range(2)]


def raw_to_control(raw: Sequence[float], num_curves: int) -> list[float]:
    """Raw search-space values in [0,1] -> monotone control points (A§3.2), curve by curve."""
    control = []
    for curve in _split(list(raw), num_curves):
        last = [0.0, 0.0]  # running x and y
        for k, value in enumerate(curve):
            axis = k % 2
            last[axis] = last[axis] + value * (1.0 - last[axis])
            control.append(last[axis])
    return control


def control_to_raw(control: Sequence[float], num_curves: int) -> list[float]:
    """Inverse of `raw_to_control`; a coordinate that already reached 1 maps to raw 0."""
    raw = []
    for curve in _split(list(control), num_curves):
        last = [0.0, 0.0]
        for k, value in enumerate(curve):
            axis = k % 2
            room = 1.0 - last[axis]
            raw.append((value - last[axis]) / room if room > 0 else 0.0)
            last[axis] = value
    return raw


def _split(theta: list[float], num_curves: int) -> list[list[float]]:
    size = len(theta) // num_curves
    return [theta[i * size : (i + 1) * size] for i in range(num_curves)]


def check_theta(theta: Sequence[float], num_curves: int, what: str = "theta") -> int:
    """Validate a flat control-point vector of `num_curves` curves; return pieces per curve."""
    n = len(theta)
    per_curve, rest = divmod(n, num_curves)
    if rest or per_curve % 2 or (per_curve // 2) % 2 == 0:
        valid = ", ".join(str(num_curves * 2 * (2 * k - 1)) for k in (1, 2, 3))
        raise ValueError(
            f"{what} has {n} numbers; {num_curves} curve(s) of quadratic Bezier pieces need "
            f"num_curves * 2 * (2 * pieces - 1) numbers ({valid}, ...)"
        )
    values = [float(v) for v in theta]
    for i, v in enumerate(values):
        if not (0.0 <= v <= 1.0):  # also rejects NaN
            raise ValueError(f"{what}[{i}] = {v} is outside [0, 1]; control points live in [0,1]")
    for c, curve in enumerate(_split(values, num_curves)):
        for axis, name in ((0, "x"), (1, "y")):
            coords = curve[axis::2]
            for k in range(1, len(coords)):
                if coords[k] < coords[k - 1]:
                    raise ValueError(
                        f"{what}: curve {c} is not monotone: {name}{k + 1} = {coords[k]} < "
                        f"{name}{k} = {coords[k - 1]} (control points must be non-decreasing; "
                        f"raw search values go through raw_to_control)"
                    )
    return (per_curve // 2 + 1) // 2


# --- evaluation -------------------------------------------------------------------------------

# a = 0 (control point above the start) makes u = 0 a 0/0 and a = 1 (control point under the end)
# makes the slope at u = 1 infinite; softmax saturates to exactly 0 and 1, so both ends happen.
# Clamping a into [1e-6, 1 - 1e-6] keeps the slope finite (SPEC A§8.1).
_A_MIN = 1e-6


def curve_table(points: Sequence[float]) -> torch.Tensor:
    """Per-piece constants (x_start, x_end, 1/width, a, y0, y1, y2) of one curve, float64.

    Shape (num_pieces, 7). Computed once per curve so the hot path only gathers them."""
    xy = (
        [(0.0, 0.0)] + [(points[i], points[i + 1]) for i in range(0, len(points), 2)] + [(1.0, 1.0)]
    )
    rows = []
    for k in range(0, len(xy) - 1, 2):
        (x0, y0), (x1, y1), (x2, y2) = xy[k], xy[k + 1], xy[k + 2]
        width = x2 - x0
        # a piece narrower than 1e-12 is a vertical jump: it only sees x = x0 and returns y0
        inv_width = 1.0 / width if width > 1e-12 else 0.0
        a = min(max((x1 - x0) * inv_width, _A_MIN), 1.0 - _A_MIN)
        rows.append([x0, x2, inv_width, a, y0, y1, y2])
    return torch.tensor(rows, dtype=torch.float64)


def bezier_value_and_slope(
    x: torch.Tensor, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """h(x) and dh/dx, elementwise, for the curve described by `table` (see `curve_table`).

    Piece selection follows the reference: the first piece takes x <= its end, piece k takes
    (start_k, end_k]. Within a piece, u = (x - x0) / width solves u = 2at + (1 - 2a)t^2 with the
    cancellation-free root t = u / (a + sqrt(a^2 + (1 - 2a)u)) (SPEC B3), which is exact near
    a = 0.5 where the reference's form collapses to a staircase (A§8.1).
    """
    table = table.to(device=x.device, dtype=x.dtype)
    x0, _, inv_w, a, y0, y1, y2 = table[0]
    for row in table[1:]:  # a chain of selects (not a gather) so torch.compile fuses it
        later = x > row[0]
        x0, inv_w, a, y0, y1, y2 = (
            torch.where(later, new, old)
            for new, old in zip(row[[0, 2, 3, 4, 5, 6]], (x0, inv_w, a, y0, y1, y2), strict=True)
        )
    u = ((x - x0) * inv_w).clamp(0.0, 1.0)
    # a^2 + (1 - 2a)u written as a sum of two non-negative terms: no cancellation near a = 1
    root = torch.sqrt(a * a * (1 - u) + (1 - a) * (1 - a) * u)  # = (du/dt) / 2 > 0
    t = u / (a + root)
    y = (1 - t) * (1 - t) * y0 + 2 * t * (1 - t) * y1 + t * t * y2
    # h(1) = 1 even when the last pieces are vertical at x = 1 (raw x = 1), where the piece rule
    # above would return the bottom of the jump; for every other curve this changes nothing
    y = torch.where(x >= 1, 1.0, y)
    dy_dt = 2 * ((1 - t) * (y1 - y0) + t * (y2 - y1))
    slope = dy_dt * inv_w / (2 * root)  # dh/dx = (dy/dt) / (dx/dt), dx/dt = width * 2 * root
    return y, slope


class _Bezier(torch.autograd.Function):
    """h(x) with a hand-written backward: saves the slope only, not the solver's temporaries."""

    @staticmethod
    def forward(ctx, x, table):
        y, slope = _fused_value_and_slope(x.reshape(-1), table)
        ctx.save_for_backward(slope)
        return y.view_as(x)

    @staticmethod
    def backward(ctx, grad_y):
        (slope,) = ctx.saved_tensors
        return grad_y * slope.view_as(grad_y), None


_fused_value_and_slope = fused(bezier_value_and_slope)


def bezier(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Differentiable h(x) for a tensor of any shape with values in [0,1]."""
    return _Bezier.apply(x, table)


def curve_tables(theta: Sequence[float], num_curves: int) -> list[torch.Tensor]:
    """Tables of every curve in a validated flat theta."""
    return [curve_table(curve) for curve in _split([float(v) for v in theta], num_curves)]


def evaluate_curve(points: Sequence[float], x: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """h(x) of one curve given its control points (convenience for tests, plots and reports)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return bezier_value_and_slope(x, curve_table(points))[0]


def preset_theta(name: str, metric: str) -> list[float]:
    """Control points of a named preset; `identity` adapts to the metric's curve count."""
    if name == "identity":
        return identity_control(DEFAULT_PIECES[metric]) * METRIC_CURVES[metric]
    if name not in PRESETS:
        from surrogates.checks import unknown_name

        raise unknown_name("preset", name, list_presets())
    return list(PRESETS[name])
