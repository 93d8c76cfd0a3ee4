import sys

from hypervisor.agent.entry import main

sys.exit(main())
