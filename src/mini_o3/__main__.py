"""`python -m mini_o3` runs the command-line tool."""

from mini_o3.cli import main

main()
