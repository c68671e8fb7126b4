"""The one C module of the package (everything else is in pyproject.toml).

schemas/_avro.c reads and writes Avro longs and strings for schemas/codec.py's
generated readers and writers (issue 10: decoding was most of a catch-up's
and a replay's time). It is optional: where no C compiler is, pip says the
build failed and installs the package without it, and the codec reads and
writes the same bytes in Python (``schemas.codec.ACCELERATED`` says which).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("schemas._avro", ["schemas/_avro.c"], optional=True)])
