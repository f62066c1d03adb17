import sys

from isd.cli.main import main

sys.exit(main())
