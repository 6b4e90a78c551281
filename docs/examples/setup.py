from Cython.Build import cythonize
from setuptools import Extension, setup

import percpu

setup(
    name="hits",
    ext_modules=cythonize(
        [Extension("hits", ["hits.pyx"], include_dirs=[percpu.get_include()])],
    ),
)
