"""`python -m medbeam.cli`."""

from medbeam.cli import main

main()
