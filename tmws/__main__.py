"""``python -m tmws`` runs the service, like ``tmws serve``."""

import sys

from tmws.cli import main

sys.exit(main(sys.argv[1:] or ["serve"]))
