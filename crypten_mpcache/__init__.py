"""crypten_mpcache: private LLM inference under MPC (CrypTen) with MPCache eviction.

Importing the package applies the CrypTen compatibility patches (see
``crypten_mpcache.patches.crypten_compat``) so that ``import crypten`` works on torch 2.x
without deprecation noise.
"""

from crypten_mpcache.patches import crypten_compat as _crypten_compat

_crypten_compat.apply_all()

__version__ = "0.1.0"
