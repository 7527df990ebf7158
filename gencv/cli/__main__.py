"""`python -m gencv.cli`."""

from gencv.cli.app import main

main()
