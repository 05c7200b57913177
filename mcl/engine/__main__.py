import sys

from mcl.engine.worker import main

sys.exit(main())
