"""The disconnected bundle: an OCI image layout carrying every image, disk image and patch of a
deployment (``layout``: writing and reading it, as a folder or a streamed tar; ``export`` and
``load``: filling it from the registries and caches, and loading it back with no network)."""
