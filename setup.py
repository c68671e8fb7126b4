"""The C modules of the package (everything else is in pyproject.toml).

Both are optional: where no C compiler is, pip says the build failed and
installs the package without them, and the same work is done in Python.

- schemas/_avro.c reads and writes Avro longs and strings for
  schemas/codec.py's generated readers and writers (issue 10: decoding was
  most of a catch-up's and a replay's time); ``schemas.codec.ACCELERATED``
  says whether it is in use.
- ledger/_frozen.c is the ``__init__`` of the domain's @frozen records
  (ledger/frozen.py: building them was a fifth of a replay's time);
  ``ledger.frozen.ACCELERATED`` says whether it is in use.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("schemas._avro", ["schemas/_avro.c"], optional=True),
                   Extension("ledger._frozen", ["ledger/_frozen.c"], optional=True)])
