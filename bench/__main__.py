"""`python -m bench`: the whole suite (bench/suite.py)."""

from .suite import main

main()
