"""python -m worker.cli: the prefsync command."""

from worker.cli import main

main()
