"""prm_check: real, bounded-memory curvature statistics of causal LMs and the PRM experiment.

Import is light on purpose (no torch): the pytest plugin imports this package.
"""

__version__ = "0.1.0"
