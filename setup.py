"""Build script for broomio's C engine.

Build switches (environment variables read at build time):

* ``BROOMIO_DEBUG=1``    -- ``-O0 -g3``, assertions on (``-UNDEBUG``).
* ``BROOMIO_SANITIZE=1`` -- AddressSanitizer + UndefinedBehaviorSanitizer
  (implies a debug build).  Run the result with ``LD_PRELOAD`` of libasan and
  ``PYTHONMALLOC=malloc``; ``.ci/run`` shows how.
"""

import glob
import os

from setuptools import Extension, setup

debug = os.environ.get("BROOMIO_DEBUG") == "1"
sanitize = os.environ.get("BROOMIO_SANITIZE") == "1"

compile_args = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers",
                "-Wno-cast-function-type", "-fvisibility=hidden"]
link_args: list[str] = []
undef: list[str] = []
if debug or sanitize:
    compile_args += ["-O0", "-g3"]
    undef.append("NDEBUG")
else:
    compile_args += ["-O2"]
if sanitize:
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
             "-fno-sanitize-recover=undefined"]
    compile_args += flags
    link_args += flags
    # CPython's own CFLAGS (prepended to every extension compile) contain
    # -fwrapv, which makes signed overflow defined and so silently disables
    # UBSan's signed-integer-overflow and shift checks.  Undo it here.
    compile_args += ["-fno-wrapv"]

engine = Extension(
    "broomio._engine",
    sources=sorted(glob.glob("src/broomio/_engine/*.c")),
    depends=sorted(glob.glob("src/broomio/_engine/*.h")),
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    undef_macros=undef,
)

setup(ext_modules=[engine])
