"""SurrogateLoss: reference equivalence, independent soft formulas, gradients, void, options."""

import pytest
import torch
from helpers import blob_target, random_logits
from reference_asl import reference_loss

import surrogates.surrogate as surrogate_module
from surrogates import METRICS, PRESETS, SurrogateLoss

C = 5


def data(dtype=torch.float64, n=2, h=24, w=20, seed=0):
    return random_logits(n, C, h, w, seed=seed, dtype=dtype), blob_target(n, h, w, C, seed=seed)


def loss_and_grad(loss_fn, logits, target):
    logits = logits.detach().clone().requires_grad_(True)
    value = loss_fn(logits, target)
    value.backward()
    return value.detach(), logits.grad


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("preset", ["asl-voc", "identity"])
def test_matches_reference_formulas(metric, preset):
    """Values and gradients of the plain A§2 re-statement (reference solver, one-hot tensors,
    2-D max-pool), float64 to 1e-10 and float32 to 1e-6."""
    theta = PRESETS[f"asl-voc-{metric}"] if preset == "asl-voc" else "identity"
    loss = SurrogateLoss(metric, theta, C, tolerance=2)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-6)):
        logits, target = data(dtype)
        ours, ours_grad = loss_and_grad(loss, logits, target)
        ref, ref_grad = loss_and_grad(
            lambda z, t: reference_loss(metric, loss.theta, z, t, C, tolerance=2), logits, target
        )
        assert ours.dtype == dtype
        assert abs(float(ours - ref)) < tol, (dtype, float(ours), float(ref))
        assert torch.allclose(ours_grad, ref_grad, atol=tol, rtol=1e-4), dtype


def soft_counts(logits, target):
    """Independent soft statistics with identity curves: (p, one-hot y, valid mask m)."""
    p = torch.softmax(logits, 1)
    m = (target != 255).unsqueeze(1).to(p.dtype)
    y = torch.stack([(target == c) for c in range(C)], 1).to(p.dtype)
    return p * m, y * m


def test_identity_region_surrogates_are_the_textbook_soft_formulas():
    logits, target = data()
    p, y = soft_counts(logits, target)
    inter = (p * y).sum((0, 2, 3))
    union = (p + y - p * y).sum((0, 2, 3))
    freq = y.sum((0, 2, 3))
    soft_iou = inter / union
    expected = {
        "miou": soft_iou.mean(),
        "fwiou": (freq * soft_iou).sum() / freq.sum(),
        "macc": (inter / freq).mean(),
        "gacc": inter.sum() / freq.sum(),
        # tolerance larger than the image: the trimap covers every valid pixel
        "biou": soft_iou.mean(),
    }
    for metric, s in expected.items():
        loss = SurrogateLoss(metric, "identity", C, tolerance=30, drop_background=False)
        assert float(loss(logits, target)) == pytest.approx(1 - float(s), abs=1e-7), metric


def test_present_class_reduction_and_per_image():
    logits, target = data(n=3)
    target[0] = target[0].clamp(max=1)  # image 0 holds classes 0 and 1 only
    p, y = soft_counts(logits, target)
    present = y.sum((0, 2, 3)) > 0
    soft_iou = (p * y).sum((0, 2, 3)) / (p + y - p * y).sum((0, 2, 3))
    loss = SurrogateLoss("miou", "identity", C, class_reduction="present")
    assert float(loss(logits, target)) == pytest.approx(1 - float(soft_iou[present].mean()))
    per_image = []
    for i in range(3):
        pi, yi = p[i : i + 1], y[i : i + 1]
        iou_i = (pi * yi).sum((0, 2, 3)) / (pi + yi - pi * yi).sum((0, 2, 3))
        per_image.append(iou_i[yi.sum((0, 2, 3)) > 0].mean())
    loss = SurrogateLoss("miou", "identity", C, class_reduction="present", per_image=True)
    assert float(loss(logits, target)) == pytest.approx(1 - float(torch.stack(per_image).mean()))


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_float64(metric):
    logits, target = data(n=1, h=10, w=9)
    loss = SurrogateLoss(metric, f"asl-voc-{metric}", C, tolerance=2)
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (z,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_float32_agrees_with_float64(metric):
    logits, target = data()
    loss = SurrogateLoss(metric, f"asl-voc-{metric}", C)
    v64, g64 = loss_and_grad(loss, logits, target)
    v32, g32 = loss_and_grad(loss, logits.float(), target)
    assert abs(float(v32) - float(v64)) < 1e-5
    assert torch.allclose(g32.double(), g64, atol=1e-5, rtol=1e-3)


def test_half_precision_logits_are_computed_in_float32():
    logits, target = data(torch.float32)
    loss = SurrogateLoss("miou", "asl-voc-miou", C)
    value = loss(logits.bfloat16(), target)
    assert value.dtype == torch.float32
    assert abs(float(value) - float(loss(logits.bfloat16().float(), target))) < 1e-7


@pytest.mark.parametrize("metric", ["miou", "fwiou", "biou", "macc", "gacc"])
def test_ignored_pixels_have_no_influence(metric):
    logits, target = data()
    void = target == 255
    assert void.any()
    loss = SurrogateLoss(metric, f"asl-voc-{metric}", C, tolerance=2)
    value, grad = loss_and_grad(loss, logits, target)
    scrambled = logits.clone()
    scrambled[void.unsqueeze(1).expand_as(logits)] = 50 * torch.randn(int(void.sum()) * C).double()
    value2, grad2 = loss_and_grad(loss, scrambled, target)
    assert float(value2) == pytest.approx(float(value), abs=1e-12)
    mask = void.unsqueeze(1).expand_as(grad)
    assert (grad[mask] == 0).all() and (grad2[mask] == 0).all()
    assert torch.allclose(grad, grad2, atol=1e-12)


def test_bf1_counts_predicted_edges_in_void_like_the_reference():
    # A§2.7: no void mask in the BF1 surrogate, consistent with the metric (predicted edges in void
    # count), so logits on void pixels do matter; the reference formula agrees with us there.
    logits, target = data()
    loss = SurrogateLoss("bf1", "asl-voc-bf1", C, tolerance=2)
    _, grad = loss_and_grad(loss, logits, target)
    assert grad[(target == 255).unsqueeze(1).expand_as(grad)].abs().sum() > 0


def test_bf1_without_gt_edges_is_finite_with_zero_gradient():
    logits = random_logits(2, C, 12, 12)
    target = torch.full((2, 12, 12), 3)  # one class everywhere: no GT edge
    value, grad = loss_and_grad(SurrogateLoss("bf1", "asl-voc-bf1", C), logits, target)
    assert float(value) == 1.0 and (grad == 0).all()


def test_biou_with_empty_band_is_one_with_zero_gradient():
    logits = random_logits(2, C, 12, 12)
    target = torch.zeros(2, 12, 12, dtype=torch.long)  # background only, dropped from the trimap
    value, grad = loss_and_grad(SurrogateLoss("biou", "asl-voc-biou", C), logits, target)
    assert float(value) == 1.0 and (grad == 0).all()


def test_region_weight_adds_the_identity_soft_miou():
    logits, target = data()
    for metric in ("biou", "bf1"):
        plain = SurrogateLoss(metric, f"asl-voc-{metric}", C)(logits, target)
        guarded = SurrogateLoss(metric, f"asl-voc-{metric}", C, region_weight=0.5)(logits, target)
        soft_miou_loss = SurrogateLoss("miou", "identity", C)(logits, target)
        assert float(guarded) == pytest.approx(float(plain + 0.5 * soft_miou_loss), abs=1e-12)


def test_ce_weight_mixes_cross_entropy_in_by_the_formula():
    logits, target = data()
    target[0, :3] = 255  # void pixels leave both parts
    valid = target != 255
    log_p = torch.log_softmax(logits, dim=1)
    gathered = log_p.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    ce = -gathered[valid].mean()  # cross-entropy written out, mean over the valid pixels
    for metric in ("miou", "bf1"):
        surrogate = SurrogateLoss(metric, f"asl-voc-{metric}", C)(logits, target)
        for weight in (0.25, 1.0):
            mixed = SurrogateLoss(metric, f"asl-voc-{metric}", C, ce_weight=weight)
            expected = (1 - weight) * surrogate + weight * ce
            assert float(mixed(logits, target)) == pytest.approx(float(expected), abs=1e-12)
    with pytest.raises(ValueError, match="ce_weight must be in"):
        SurrogateLoss("miou", "identity", C, ce_weight=1.5)


def test_presets_build_with_exact_vectors_and_bad_options_fail():
    for metric in METRICS:
        assert SurrogateLoss(metric, f"asl-voc-{metric}", 21).theta == PRESETS[f"asl-voc-{metric}"]
    assert SurrogateLoss("biou", "identity", 21).drop_background is True
    assert SurrogateLoss("bf1", "identity", 21).drop_background is False
    with pytest.raises(ValueError, match="region_weight"):
        SurrogateLoss("miou", "identity", 21, region_weight=0.5)
    with pytest.raises(ValueError, match="class_reduction"):
        SurrogateLoss("miou", "identity", 21, class_reduction="some")
    with pytest.raises(ValueError, match="per_image"):
        SurrogateLoss("miou", "identity", 21, sync=True, per_image=True)


def test_more_pieces_per_curve_are_accepted():
    # one 3-piece curve for macc, with a = 0.25, 0.625, 0.25 in its pieces (the reference solver
    # is only exact away from a = 0.5)
    theta = [0.05, 0.3, 0.2, 0.5, 0.45, 0.6, 0.6, 0.7, 0.7, 0.9]
    logits, target = data()
    value, grad = loss_and_grad(SurrogateLoss("macc", theta, C), logits, target)
    ref, ref_grad = loss_and_grad(
        lambda z, t: reference_loss("macc", theta, z, t, C), logits, target
    )
    assert abs(float(value - ref)) < 1e-10 and torch.allclose(grad, ref_grad, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(metric="mio", theta="identity"), "unknown metric 'mio'.*did you mean 'miou'"),
        (dict(metric="miou", theta=[0.2] * 6), "has 6 numbers"),
        (dict(metric="bf1", theta=PRESETS["asl-voc-miou"]), "has 12 numbers"),
        (dict(metric="macc", theta=[0.1, 0.2, 0.3, 0.4, 1.2, 0.6]), "outside \\[0, 1\\]"),
        (dict(metric="macc", theta=[0.3, 0.2, 0.1, 0.4, 0.5, 0.6]), "not monotone"),
        (dict(metric="miou", theta="identity", num_classes=0), "num_classes"),
        (dict(metric="bf1", theta="identity", tolerance=-1), "tolerance"),
    ],
)
def test_bad_construction_is_rejected(kwargs, message):
    kwargs.setdefault("num_classes", C)
    with pytest.raises(ValueError, match=message):
        SurrogateLoss(**kwargs)


def test_bad_inputs_are_rejected():
    loss = SurrogateLoss("miou", "identity", C)
    logits, target = data()
    with pytest.raises(ValueError, match="does not match logits"):
        loss(logits, target[:, :-1])
    with pytest.raises(ValueError, match="N x C x H x W"):
        loss(logits[0], target[0])
    with pytest.raises(ValueError, match="channels"):
        loss(logits[:, :3], target)
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="label 7, outside \\[0, 5\\)"):
        loss(logits, bad)
    with pytest.raises(ValueError, match="integer class indices"):
        loss(logits, target.float())
    nan_logits = logits.clone()
    nan_logits[0, 1, 2, 3] = float("nan")
    for metric in METRICS:
        with pytest.raises(ValueError, match="1 non-finite"):
            SurrogateLoss(metric, "identity", C)(nan_logits, target)


def test_from_file_builds_the_exported_loss(tmp_path):
    path = tmp_path / "miou_bezier.yaml"
    theta = PRESETS["asl-voc-miou"]
    path.write_text(
        "# searched parameters\nloss:\n  name: surrogate\n  metric: miou\n"
        f"  theta: {theta}\n  num_classes: 21\n  class_reduction: present\n"
    )
    loss = SurrogateLoss.from_file(path)
    assert loss.theta == theta and loss.num_classes == 21 and loss.class_reduction == "present"
    assert SurrogateLoss.from_file(path, num_classes=5).num_classes == 5
    path.write_text("loss:\n  metric: miou\n  theta: identity\n  weight: 2\n")
    with pytest.raises(ValueError, match="unknown key .* 'weight'"):
        SurrogateLoss.from_file(path, num_classes=5)
    path.write_text("loss:\n  metric: miou\n  theta: identity\n")
    with pytest.raises(ValueError, match="num_classes"):
        SurrogateLoss.from_file(path)
    with pytest.raises(ValueError, match="not found"):
        SurrogateLoss.from_file(tmp_path / "missing.yaml", num_classes=5)


def test_tables_are_buffers_that_follow_the_module_and_are_built_once():
    """The curve tables move with .to() (a GPU loss holds them on the GPU: no host -> device
    copy per call) and a forward pass neither rebuilds nor moves them."""
    import copy

    loss = SurrogateLoss("bf1", "identity", 4)
    assert dict(loss.named_buffers())["tables"] is loss.tables
    assert loss.tables.dtype == torch.float64
    meta = copy.deepcopy(loss).to("meta")
    assert meta.tables.device.type == "meta" and meta.tables.shape == loss.tables.shape
    assert copy.deepcopy(loss).float().tables.dtype == torch.float32
    table, address = loss.tables, loss.tables.data_ptr()
    logits = random_logits(2, 4, 16, 16, seed=0)
    for _ in range(2):
        loss(logits, blob_target(2, 16, 16, 4, seed=1))
    assert loss.tables is table and loss.tables.data_ptr() == address


def test_value_checks_run_on_the_first_call_or_with_debug():
    """Label and finiteness checks make the host wait for the GPU: first call only, unless
    debug (or SLS_DEBUG=1)."""
    logits, target = random_logits(1, 3, 8, 8, seed=0), blob_target(1, 8, 8, 3, seed=1)
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="label 7"):
        SurrogateLoss("miou", "identity", 3)(logits, bad)
    loss = SurrogateLoss("miou", "identity", 3)
    loss(logits, target)
    assert torch.isnan(loss(logits * float("nan"), target))  # not checked after the first call
    debug = SurrogateLoss("miou", "identity", 3, debug=True)
    debug(logits, target)
    with pytest.raises(ValueError, match="non-finite"):
        debug(logits * float("nan"), target)
    with pytest.raises(ValueError, match="label 7"):
        debug(logits, bad)


@pytest.mark.parametrize("metric", ["biou", "bf1"])
def test_boundary_surrogates_match_the_reference_beyond_63_classes(metric):
    """70 classes: the GT edge classes take two int64 words of bits (surrogates/boundary.py)."""
    c = 70
    logits = random_logits(2, c, 16, 18, seed=3)
    target = blob_target(2, 16, 18, c, seed=3, cell=3)
    loss = SurrogateLoss(metric, "identity", c, tolerance=2)
    ours, ours_grad = loss_and_grad(loss, logits, target)
    ref, ref_grad = loss_and_grad(
        lambda z, t: reference_loss(metric, loss.theta, z, t, c, tolerance=2), logits, target
    )
    assert abs(float(ours - ref)) < 1e-10
    assert torch.allclose(ours_grad, ref_grad, atol=1e-10, rtol=1e-6)


@pytest.mark.parametrize("metric", ["miou", "fwiou", "biou", "bf1"])
def test_image_chunks_give_the_values_of_one_call(metric, monkeypatch):
    """On CPU the dense kernels run a few images at a time (`_image_chunks`): the loss and its
    gradient are those of one call over the batch, to rounding (a compiled reduction may add in
    another order for another batch size). Class 4 absent: bf1 computes the classes with GT
    edges only. Per image, so that each image's gradient is its own."""
    logits, target = data(torch.float64, n=5, h=12, w=10, seed=2)
    target = torch.where(target == 4, 3, target)
    loss = SurrogateLoss(metric, f"asl-voc-{metric}", C, tolerance=2, per_image=True)
    whole = loss_and_grad(loss, logits, target)
    elements = 2 * logits[0].numel()
    monkeypatch.setattr(surrogate_module, "_REGION_CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(surrogate_module, "_BOUNDARY_CHUNK_ELEMENTS", elements)
    chunks = surrogate_module._image_chunks(logits, elements)
    assert [len(range(5)[i]) for i in chunks] == [1, 2, 2]
    # off the CPU (here the meta device) one call: a GPU's caching allocator recycles anyway
    assert surrogate_module._image_chunks(logits.to("meta"), elements) == [slice(0, 5)]
    chunked = loss_and_grad(loss, logits, target)
    assert abs(float(whole[0] - chunked[0])) < 1e-14
    assert torch.allclose(whole[1], chunked[1], rtol=1e-12, atol=1e-16)


def bf1_against_reference(logits, target):
    """(loss difference, our gradient, the reference's) of the asl-voc-bf1 surrogate, r = 2."""
    loss = SurrogateLoss("bf1", PRESETS["asl-voc-bf1"], C, tolerance=2)
    ours, ours_grad = loss_and_grad(loss, logits, target)
    ref, ref_grad = loss_and_grad(
        lambda z, t: reference_loss("bf1", loss.theta, z, t, C, tolerance=2), logits, target
    )
    return abs(float(ours - ref)), ours_grad, ref_grad


def test_bf1_gradient_matches_the_reference_where_the_softmax_saturates():
    """Large logits: many probabilities are exactly 0 or 1 in float32, so erosion windows and
    dilation windows hold ties; the gradient must still be the reference's (max_pool2d) one."""
    logits = random_logits(2, C, 24, 20, seed=5, dtype=torch.float32, scale=40.0)
    target = blob_target(2, 24, 20, C, seed=5)
    assert (torch.softmax(logits, 1) == 1).sum() > 100  # the ties this test is about
    difference, ours_grad, ref_grad = bf1_against_reference(logits, target)
    assert difference < 1e-6
    assert torch.allclose(ours_grad, ref_grad, atol=1e-7, rtol=1e-4)


def test_bf1_gradient_matches_the_reference_on_plateaus():
    """Blocky logits: p stays inside (0, 1) and is constant over plateaus, so erosion and
    dilation windows hold several equal extrema that carry gradient. The one that gets it must
    be the first in row-major order, as the reference's max_pool2d picks."""
    coarse = random_logits(2, C, 6, 5, seed=7)
    logits = coarse.repeat_interleave(4, 2).repeat_interleave(4, 3)  # 4 x 4 plateaus
    difference, ours_grad, ref_grad = bf1_against_reference(logits, blob_target(2, 24, 20, C, 7))
    assert difference < 1e-10
    assert torch.allclose(ours_grad, ref_grad, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("drop_background", [False, True])
def test_bf1_skips_classes_without_gt_edges_exactly(drop_background):
    """Only classes with a GT edge in the batch are computed (a VOC image holds 2-3 of 21): the
    loss and the gradient of every logit, the skipped channels' included, stay the reference's.
    Classes 2 and 5 of 7 are absent."""
    c = 7
    logits = random_logits(2, c, 20, 18, seed=7)
    blobs = blob_target(2, 20, 18, 5, seed=7)  # classes 0-4 and void
    target = torch.where(blobs == 255, 255, torch.tensor([0, 1, 3, 4, 6])[blobs.clamp(max=4)])
    loss = SurrogateLoss(
        "bf1", PRESETS["asl-voc-bf1"], c, tolerance=2, drop_background=drop_background
    )
    ours, ours_grad = loss_and_grad(loss, logits, target)
    ref, ref_grad = loss_and_grad(
        lambda z, t: reference_loss("bf1", loss.theta, z, t, c, 2, drop_background), logits, target
    )
    assert abs(float(ours - ref)) < 1e-10
    assert torch.allclose(ours_grad, ref_grad, atol=1e-10, rtol=1e-6)
    assert ours_grad[:, 2].abs().max() > 0  # absent classes still get the softmax's gradient


@pytest.mark.parametrize("case", ["blobs", "plateaus", "absent classes", "channels_last"])
def test_bf1_dense_sums_match_the_reference(case, monkeypatch):
    """Off the CPU bf1 takes its dense sums, with nothing that waits for the device: every
    class, and the recall's window maxima from max_pool2d over all pixels. The loss and the
    gradient stay the reference's, ties on plateaus included, in either memory layout."""
    monkeypatch.setattr(surrogate_module, "_dense_recall", lambda device: True)
    logits, target = data()
    if case == "plateaus":
        logits = random_logits(2, C, 6, 5, seed=7).repeat_interleave(4, 2).repeat_interleave(4, 3)
    if case == "absent classes":
        target = torch.where(target == 4, 3, target)
    if case == "channels_last":  # the engine's logits on CUDA
        logits = logits.contiguous(memory_format=torch.channels_last)
    difference, ours_grad, ref_grad = bf1_against_reference(logits, target)
    assert difference < 1e-10
    assert torch.allclose(ours_grad, ref_grad, atol=1e-12, rtol=1e-9)


def test_bf1_waits_for_nothing_off_the_cpu():
    """On the meta device no value exists, so an op that needs one (nonzero, bincount, any: a
    host sync on a GPU) raises; bf1's forward and backward run through. (The forward's autocast
    has no meta device: the surrogate itself is called.)"""
    logits, target = data(torch.float32)
    loss = SurrogateLoss("bf1", PRESETS["asl-voc-bf1"], C, tolerance=2).to("meta")
    z = logits.to("meta").requires_grad_(True)
    valid = target.to("meta") != 255
    value = 1 - loss._bf1(z, torch.where(valid, target.to("meta"), 0).long(), valid)
    value.backward()
    assert value.shape == () and z.grad.shape == logits.shape
