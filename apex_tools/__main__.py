"""``python -m apex_tools`` is the ``apex`` command."""

from apex_tools.main import program

program.run()
