"""Lazy `torch.compile` for the elementwise hot spots of the surrogates.

An elementwise chain such as the Bezier solver is ~25 passes over memory in eager mode and one
fused loop when compiled: 10-100x faster on CPU (bench/losses.py). Functions wrapped here are
compiled on first call with dynamic shapes, so one compilation serves every tensor size; callers
pass 1-D tensors and tensor-valued constants so that no Python number is baked into the graph,
and the wrapper hands them over detached, so one graph per dtype serves every caller. The
compiled code lands in inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, by default one folder
per user under /tmp), which every process on the machine reuses: the search compiles the kernels
once in its driver before the trials start (search/run.py).

SLS_COMPILE=0 turns compilation off. Where compilation fails (no C++ compiler, no triton) the
eager function runs instead, after one warning: the values are the same, only slower. Only a
compiler's failure switches to eager; an error of the computation itself (CUDA out of memory,
a bad input) is raised as it would be in eager mode, so that the caller's failure handling sees
it and later calls keep the compiled kernels.
"""

import functools
import os
import warnings
from collections.abc import Callable

import torch

_enabled = os.environ.get("SLS_COMPILE", "1") != "0"


def compiling() -> bool:
    """Whether fused functions run compiled (SLS_COMPILE is not 0 and no compiler failed)."""
    return _enabled


def is_compile_error(error: BaseException) -> bool:
    """True for a failure of dynamo or inductor (tracing, lowering, the C++/triton build), not
    for an error the computation raised, which dynamo may wrap (an OOM inside autotuning)."""
    seen = error
    while seen is not None:
        if isinstance(seen, torch.OutOfMemoryError):
            return False
        seen = seen.__cause__ or seen.__context__
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    module = type(error).__module__ or ""
    return isinstance(error, TorchDynamoException | InductorError) or module.startswith(
        ("torch._dynamo", "torch._inductor", "triton")
    )


def _compile(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=True)


def fused(fn: Callable, compile_fn: Callable = _compile) -> Callable:
    """`fn`, compiled on its first call by `compile_fn` (torch.compile with dynamic shapes)."""
    compiled = None

    @functools.wraps(fn)
    def run(*args):
        nonlocal compiled
        global _enabled
        if not _enabled:
            return fn(*args)
        if compiled is None:
            compiled = compile_fn(fn)
        # detached tensors are not views: dynamo would otherwise guard on each view's base
        # (its layout, its batch size) and recompile per caller, up to its limit of 8 graphs
        # and then run eager; these functions sit inside autograd.Functions, so no graph is lost
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        try:
            return compiled(*plain)
        except Exception as error:
            if not is_compile_error(error):
                raise
            warnings.warn(f"torch.compile unavailable ({error}); using eager kernels", stacklevel=2)
            _enabled = False
            return fn(*args)

    return run
