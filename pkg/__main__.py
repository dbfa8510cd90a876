"""``python -m mmrwatch``."""
import sys

from mmrwatch.agent.cli import main

sys.exit(main())
