"""`python3 -m derp ...` runs the DERP server (`wgc derper`)."""
import sys

from derp.aio.derper import main

sys.exit(main())
