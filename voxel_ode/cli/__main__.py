"""`python -m voxel_ode.cli COMMAND ...` == `voxel-ode COMMAND ...`."""

import sys

from voxel_ode.cli import main

sys.exit(main())
