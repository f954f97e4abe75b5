"""The lab beside the library: measurements and experiments on ``ssn_plugins``.

Not installed with the package (``setup.cfg`` packages only ``ssn_plugins``);
``tools/`` and ``tests/`` import it from the checkout:

- :mod:`lab.profiling`: counters of host reads, kernels and graph breaks;
- :mod:`lab.benchmark`: layer and network timings (``tools/benchmark.py``);
- :mod:`lab.gpu_check`: the checks that need a GPU (``tools/gpu_check.py``);
- :mod:`lab.study`: the small-batch study on the demo data (``tools/small_batch_study.py``).

It imports ``ssn_plugins``; ``ssn_plugins`` never imports it.
"""
