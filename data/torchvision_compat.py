"""Import torchvision on any torch build.

The PyPI torchvision wheels are CUDA builds. Next to a CPU-only torch their C++ ops cannot load,
and `import torchvision` fails in `torchvision._meta_registrations` with "operator torchvision::nms
does not exist". On exactly that error we import again with the meta-registration module
replaced by an empty one: models, backbones and transforms.v2 work; torchvision.ops kernels (nms,
deform_conv) and torchvision.io decoding do not, and this project never uses them (images are read
with PIL).

Everywhere in the project: `from data.torchvision_compat import torchvision`.
"""

import sys
import types


def _import_torchvision():
    try:
        import torchvision

        return torchvision
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-imported package before the second attempt
    sys.modules["torchvision._meta_registrations"] = types.ModuleType(
        "torchvision._meta_registrations"
    )
    import torchvision

    return torchvision


torchvision = _import_torchvision()
