import sys

from pyro_sdlgm.app.cli import main

sys.exit(main())
