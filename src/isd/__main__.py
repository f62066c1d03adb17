import sys

from isd.cli import main

sys.exit(main())
