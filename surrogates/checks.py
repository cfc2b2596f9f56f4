"""Input checks shared by the losses and metrics: one-line `ValueError`s that name the bad value.

Checks that read tensor values (labels in range, a finite loss) make the host wait for the GPU,
so the losses run them on their first call only, and on every call with `debug` (or SLS_DEBUG=1
in the environment); shape and dtype checks cost nothing and always run.
"""

import difflib
import os
from collections.abc import Iterable

import torch


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ValueError:
    """The error for a name that is not in a registry, with a did-you-mean when one is close."""
    valid = sorted(valid)
    same_but_case = [v for v in valid if v.lower() == str(name).lower()]
    close = same_but_case or difflib.get_close_matches(str(name), valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ValueError(f"unknown {kind} '{name}'; valid: {', '.join(valid)}{hint}")


def debug_default() -> bool:
    """Whether losses check values on every call unless told otherwise (SLS_DEBUG=1)."""
    return os.environ.get("SLS_DEBUG", "0") not in ("", "0")


def check_logits_target(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int | None,
    ignore_index: int,
    values: bool = True,
) -> None:
    """Shapes (N, C, H, W) and (N, H, W), integer target; with `values` (a host sync) also
    every label in [0, C) or ignore_index."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be N x C x H x W, got shape {tuple(logits.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} channels but the loss was built for "
            f"num_classes={num_classes}"
        )
    n, c, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            f"expected ({n}, {h}, {w}) (upsample logits to the label size first)"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if not values:
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= c))
    if bad.any():
        value = int(target[bad][0])
        raise ValueError(
            f"target contains label {value}, outside [0, {c}) and not ignore_index={ignore_index}"
        )


def check_finite(logits: torch.Tensor, loss: torch.Tensor) -> None:
    """Raise for non-finite logits. Called only when the loss came out non-finite, so the
    common path pays for one scalar check instead of a pass over the logits."""
    if not torch.isfinite(logits).all():
        count = int((~torch.isfinite(logits)).sum())
        raise ValueError(f"logits contain {count} non-finite value(s) (NaN or inf)")
    raise FloatingPointError(f"loss is {loss.item()} although the logits are finite")
