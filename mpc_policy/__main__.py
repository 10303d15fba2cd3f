"""``python -m mpc_policy``: the ``mpc-policy`` command (``mpc_policy.agents.run.cli``)."""

import sys

from mpc_policy.agents.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
