"""apex-tools targets for ``invoke`` run from a checkout.

The collection itself lives in the package (``apex_tools/tasks.py``) so that the installed
``apex`` command and the container image carry the very same tasks.
"""

from apex_tools.tasks import ns  # noqa: F401
