"""`python -m stsnb`: the suite's one command line (`stsnb.run.cli`)."""

import sys

from stsnb.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
