"""``python -m facegan``: the command line."""
from facegan.cli import run

run()
