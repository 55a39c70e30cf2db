"""``python -m apex_tools`` is the ``apex`` command."""

from .main import program

program.run()
