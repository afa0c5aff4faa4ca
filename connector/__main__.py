"""``python -m connector`` is ``tds``."""

import sys

from connector.cli.main import main

sys.exit(main())
