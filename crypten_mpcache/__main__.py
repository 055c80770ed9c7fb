"""``python -m crypten_mpcache``: the ``crypten-mpcache`` command line."""

import sys

from crypten_mpcache.cli import main

sys.exit(main())
