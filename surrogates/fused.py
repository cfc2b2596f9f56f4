"""Lazy `torch.compile` for the elementwise hot spots of the surrogates.

An elementwise chain such as the Bezier solver is ~25 passes over memory in eager mode and one
fused loop when compiled: 10-100x faster on CPU (bench/losses.py). Functions wrapped here are
compiled on first call with dynamic shapes, so one compilation serves every tensor size; callers
pass 1-D tensors and tensor-valued constants so that no Python number is baked into the graph.

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
        try:
            return compiled(*args)
        except Exception as error:
            if not is_compile_error(error):
                raise
            warnings.warn(f"torch.compile unavailable ({error}); using eager kernels", stacklevel=2)
            _enabled = False
            return fn(*args)

    return run
