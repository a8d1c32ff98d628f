"""The compression stage (sparse regularization, pruning, clustering, the .hwc artifact).

`hwcompress.compress` is both this package and the API function `hwcompress.compress(model,
out, ...)`: importing a submodule (hwcompress.compress.pipeline, ...) makes Python bind the
package to that name on `hwcompress`, over the function. So the package itself is callable
and forwards to hwcompress.api.compress; every other attribute is the package's.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from hwcompress.api import compress

        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
