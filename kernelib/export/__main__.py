"""`python -m kernelib.export predict FORMAT PATH INPUTS OUTPUT`: the verifying process."""

import sys

from kernelib.export.verification import main

sys.exit(main())
