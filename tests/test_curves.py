"""Bezier curves: published h(x) table, endpoints, monotonicity, conversions, stable solver."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_asl import reference_curve

from surrogates import PRESETS, control_to_raw, evaluate_curve, identity_raw, raw_to_control
from surrogates.curves import (
    bezier,
    bezier_value_and_slope,
    check_theta,
    curve_tables,
    identity_control,
    preset_theta,
)

XS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
# SPEC A§7.8: (preset, curve index, number of curves, h at XS)
TABLE = [
    ("asl-voc-miou", 0, 2, [0.2026, 0.4079, 0.5273, 0.6456, 0.6963, 0.7562, 0.8403, 0.8895, 0.9429, 0.9710, 0.9941]),
    ("asl-voc-miou", 1, 2, [0.0002, 0.0022, 0.0072, 0.0263, 0.0602, 0.1912, 0.4799, 0.7822, 0.9742, 0.9854, 0.9966]),
    ("asl-voc-biou", 0, 2, [0.1892, 0.3962, 0.5311, 0.6924, 0.7928, 0.9101, 0.9678, 0.9826, 0.9904, 0.9921, 0.9968]),
    ("asl-voc-biou", 1, 2, [0.0075, 0.0377, 0.0756, 0.1519, 0.2289, 0.3863, 0.6933, 0.8052, 0.9059, 0.9536, 0.9908]),
    ("asl-voc-fwiou", 0, 2, [0.0556, 0.2633, 0.4833, 0.7139, 0.7460, 0.8147, 0.8872, 0.9243, 0.9620, 0.9809, 0.9962]),
    ("asl-voc-fwiou", 1, 2, [0.0057, 0.0285, 0.0572, 0.1154, 0.1750, 0.3002, 0.4431, 0.6129, 0.7996, 0.8979, 0.9792]),
    ("asl-voc-macc", 0, 1, [0.1629, 0.3978, 0.5411, 0.6913, 0.7641, 0.8253, 0.8875, 0.9205, 0.9560, 0.9757, 0.9943]),
    ("asl-voc-bf1", 0, 4, [0.0105, 0.0525, 0.1049, 0.2093, 0.3132, 0.5190, 0.7205, 0.8185, 0.9132, 0.9582, 0.9920]),
    ("asl-voc-bf1", 1, 4, [0.0025, 0.0207, 0.0538, 0.1364, 0.2304, 0.4363, 0.6558, 0.7689, 0.8837, 0.9417, 0.9883]),
    ("asl-voc-bf1", 2, 4, [0.0208, 0.0946, 0.1732, 0.3054, 0.4180, 0.6109, 0.7780, 0.8552, 0.9290, 0.9648, 0.9930]),
    ("asl-voc-bf1", 3, 4, [0.0860, 0.2724, 0.4094, 0.5834, 0.6982, 0.8453, 0.9323, 0.9616, 0.9838, 0.9926, 0.9986]),
]  # fmt: skip


def curve_points(preset, index, num_curves):
    theta = PRESETS[preset]
    size = len(theta) // num_curves
    return theta[index * size : (index + 1) * size]


@pytest.mark.parametrize("preset,index,num_curves,expected", TABLE)
def test_published_curves_reproduce_spec_table(preset, index, num_curves, expected):
    points = curve_points(preset, index, num_curves)
    h = evaluate_curve(points, XS)
    assert torch.allclose(h, torch.tensor(expected, dtype=torch.float64), atol=5e-5, rtol=0)
    assert evaluate_curve(points, [0.0, 1.0]).tolist() == pytest.approx([0.0, 1.0], abs=1e-15)


def test_preset_vectors_are_the_published_ones():
    assert PRESETS["asl-voc-gacc"] == PRESETS["asl-voc-macc"]
    assert (
        PRESETS["asl-voc-miou"][0] == 5.69728440e-04
        and PRESETS["asl-voc-miou"][-1] == 9.80038125e-01
    )
    assert PRESETS["asl-voc-fwiou"][0] == 0.11907931  # the log vector, not the config's BIoU copy
    assert PRESETS["asl-voc-bf1"][3] == 0.03164796531200409
    lengths = {name: len(v) for name, v in PRESETS.items()}
    assert lengths == {
        "asl-voc-miou": 12,
        "asl-voc-fwiou": 12,
        "asl-voc-macc": 6,
        "asl-voc-gacc": 6,
        "asl-voc-biou": 12,
        "asl-voc-bf1": 8,
    }


def test_published_raw_values_match_spec():
    # SPEC A§7.1 gives the inverse-converted raw values of the mIoU h_I curve
    raw = control_to_raw(curve_points("asl-voc-miou", 0, 2), 1)
    expected = [0.000570, 0.643720, 0.338212, 0.173524, 0.433455, 0.251339]
    assert raw == pytest.approx(expected, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.integers(1, 4),
    num_curves=st.integers(1, 4),
    data=st.data(),
)
def test_random_raw_values_give_monotone_curves_and_round_trip(pieces, num_curves, data):
    size = num_curves * 2 * (2 * pieces - 1)
    raw = data.draw(st.lists(st.floats(0.0, 1.0), min_size=size, max_size=size))
    control = raw_to_control(raw, num_curves)
    assert check_theta(control, num_curves) == pieces  # in [0,1] and monotone
    x = torch.linspace(0, 1, 2001, dtype=torch.float64)
    for table in curve_tables(control, num_curves):
        h, slope = bezier_value_and_slope(x, table)
        assert h[0] == 0 and abs(h[-1] - 1) < 1e-12, table
        assert (h.diff() >= -1e-12).all()
        assert (slope >= 0).all() and torch.isfinite(slope).all()
    # round trip where the inverse is defined (no coordinate has reached 1 before the last)
    back = raw_to_control(control_to_raw(control, num_curves), num_curves)
    assert back == pytest.approx(control, abs=1e-12)


def test_raw_to_control_matches_spec_formula():
    raw = [0.2, 0.5, 0.5, 0.5, 0.5, 0.0]
    # c1 = 0.2, c2 = 0.2 + 0.5 * 0.8 = 0.6, c3 = 0.6 + 0.5 * 0.4 = 0.8 (x); y: 0.5, 0.75, 0.75
    assert raw_to_control(raw, 1) == pytest.approx([0.2, 0.5, 0.6, 0.75, 0.8, 0.75])


def test_identity_initialisation_is_the_reference_one():
    assert identity_raw(2) == pytest.approx([0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5])
    assert identity_raw(1) == [0.5, 0.5]
    assert raw_to_control(identity_raw(2), 1) == pytest.approx(identity_control(2))
    assert preset_theta("identity", "bf1") == [0.5, 0.5] * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_curve_is_x_even_where_the_reference_solver_breaks(dtype):
    # The reference initial mean converts to P2 = 0.499975 (A§3.5), so a = 0.2500125/0.500025
    # in the second piece, which is 0.5 up to rounding: the reference solver loses all precision.
    points = raw_to_control([0.25, 0.25, 0.3333, 0.3333, 0.5, 0.5], 1)
    x = torch.linspace(0, 1, 10001, dtype=dtype)
    table = curve_tables(points, 1)[0]
    h, slope = bezier_value_and_slope(x, table)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(h, x, atol=tol, rtol=0)
    assert torch.allclose(slope, torch.ones_like(x), atol=1e3 * tol)
    # the exact identity control points too
    h2, _ = bezier_value_and_slope(x, curve_tables(identity_control(3), 1)[0])
    assert torch.allclose(h2, x, atol=tol, rtol=0)


def test_reference_solver_staircase_is_real():
    """The failure our solver avoids (A§8.1): with a within rounding of 0.5 the reference's
    t = (a - sqrt(a^2 + (1 - 2a)u)) / (2a - 1) collapses to a staircase for x > 0.5."""
    points = raw_to_control([0.25, 0.25, 0.3333, 0.3333, 0.5, 0.5], 1)
    x = torch.linspace(0.5, 1.0, 11, dtype=torch.float32)
    broken = reference_curve(x, points)
    assert (broken - x).abs().max() > 0.1
    ours = evaluate_curve(points, x.double())
    assert (ours - x.double()).abs().max() < 1e-6


def test_bezier_matches_reference_solver_on_published_curves():
    x = torch.rand(5000, dtype=torch.float64)
    for preset, num_curves in [("asl-voc-miou", 2), ("asl-voc-fwiou", 2), ("asl-voc-bf1", 4)]:
        for points, table in zip(
            [curve_points(preset, i, num_curves) for i in range(num_curves)],
            curve_tables(PRESETS[preset], num_curves),
            strict=True,
        ):
            x_ = x.clone().requires_grad_(True)
            ours = bezier(x_, table)
            ours.sum().backward()
            xr = x.clone().requires_grad_(True)
            ref = reference_curve(xr, points)
            ref.sum().backward()
            assert torch.allclose(ours, ref, atol=1e-12)
            assert torch.allclose(x_.grad, xr.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "theta,message",
    [
        ([0.1] * 5, "has 5 numbers"),
        ([0.1] * 8, "has 8 numbers"),  # 2 points per curve: not a chain of quadratic pieces
        ([0.1, 0.2, 1.5, 0.4, 0.5, 0.6], "outside \\[0, 1\\]"),
        ([0.1, 0.2, -0.1, 0.4, 0.5, 0.6], "outside \\[0, 1\\]"),
        ([0.1, 0.2, float("nan"), 0.4, 0.5, 0.6], "outside \\[0, 1\\]"),
        ([0.5, 0.2, 0.3, 0.4, 0.6, 0.6], "not monotone: x2 = 0.3 < x1 = 0.5"),
        ([0.1, 0.9, 0.3, 0.4, 0.6, 0.6], "not monotone: y2 = 0.4 < y1 = 0.9"),
    ],
)
def test_bad_control_points_are_rejected(theta, message):
    with pytest.raises(ValueError, match=message):
        check_theta(theta, 1)


def test_unknown_preset_suggests_the_close_name():
    with pytest.raises(ValueError, match="did you mean 'asl-voc-miou'"):
        preset_theta("asl-voc-mio", "miou")


def test_fused_falls_back_to_eager_on_compile_errors_only(monkeypatch):
    """A compiler failure switches to eager kernels with one warning; an error of the
    computation (CUDA out of memory) reaches the caller and keeps compilation on."""
    import surrogates.fused as fused_module

    monkeypatch.setattr(fused_module, "_enabled", True)  # restored after the test

    def double(x):
        return 2 * x

    def out_of_memory(fn):
        def run(*args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return run

    oom = fused_module.fused(double, compile_fn=out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        oom(torch.ones(3))
    assert fused_module._enabled

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    broken = fused_module.fused(
        double, compile_fn=lambda fn: torch.compile(fn, backend=no_compiler)
    )
    with pytest.warns(UserWarning, match="using eager kernels"):
        assert broken(torch.ones(3)).tolist() == [2.0, 2.0, 2.0]
    assert not fused_module._enabled
