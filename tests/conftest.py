"""Test settings shared by the whole suite."""

import os

# The fused (torch.compile) kernels are tested against the eager ones in test_fused.py; everywhere
# else the eager path keeps the suite free of per-dtype compilation time.
os.environ.setdefault("SLS_COMPILE", "0")

# torchmetrics (reference implementations) imports torchvision, which needs the compat import
# first on a CPU torch; importing it here makes every test file runnable on its own.
import data.torchvision_compat  # noqa: E402, F401
