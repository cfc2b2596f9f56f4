"""Lazy `torch.compile` for the elementwise hot spots of the surrogates.

An elementwise chain such as the Bezier solver is ~25 passes over memory in eager mode and one
fused loop when compiled: 10-100x faster on CPU (bench/losses.py). Functions wrapped here are
compiled on first call with dynamic shapes, so one compilation serves every tensor size; callers
pass 1-D tensors and tensor-valued constants so that no Python number is baked into the graph.

SLS_COMPILE=0 turns compilation off. Where compilation fails (no C++ compiler, no triton) the
eager function runs instead, after one warning: the values are the same, only slower.
"""

import functools
import os
import warnings
from collections.abc import Callable

import torch

_enabled = os.environ.get("SLS_COMPILE", "1") != "0"


def fused(fn: Callable) -> Callable:
    compiled = None

    @functools.wraps(fn)
    def run(*args):
        nonlocal compiled
        global _enabled
        if not _enabled:
            return fn(*args)
        if compiled is None:
            compiled = torch.compile(fn, dynamic=True)
        try:
            return compiled(*args)
        except Exception as error:  # the compiler's failure modes are many; eager is always right
            warnings.warn(f"torch.compile unavailable ({error}); using eager kernels", stacklevel=2)
            _enabled = False
            return fn(*args)

    return run
