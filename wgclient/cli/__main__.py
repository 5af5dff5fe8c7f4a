"""`python -m wgclient.cli`: the same as the `wgc` console script."""
import sys

from wgclient.cli.main import main

sys.exit(main())
