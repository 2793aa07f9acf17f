"""What every cell imports, imported once in the local executor's fork server (not once per cell).

Measured on a 2-core AMD EPYC: a tiny digits training cell spent 3.4 of its
3.8 s importing — torch's optimizer pulls in ``torch._dynamo`` (1.9 s), the
report pulls in matplotlib (1.4 s). Imported here, every forked worker
starts with them loaded. It also applies lowbit's allocator policy
(:mod:`lowbit.allocator`, as the ``lowbit`` command does), which the workers inherit.
"""

import matplotlib

matplotlib.use("Agg")  # the reports' backend; before pyplot is imported

import matplotlib.pyplot  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401

import lowbit.allocator  # noqa: E402
import lowbit.analysis  # noqa: E402,F401
import lowbit.probe  # noqa: E402,F401
import lowbit.report  # noqa: E402,F401
import lowbit.sweep.worker  # noqa: E402,F401
import lowbit.train  # noqa: E402,F401

try:
    import sklearn.datasets  # noqa: F401  (the digits data set)
except ImportError:  # pragma: no cover - digits not installed
    pass

try:
    lowbit.allocator.apply_policy()
except ValueError:  # a bad LOWBIT_MALLOC: the command reports it; the workers keep glibc's policy
    pass
