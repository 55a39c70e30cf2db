"""The undercloud drivers: where the undercloud is, how it is reached, how playbooks run on it.

Every target asks the driver (``driver_for``) for the undercloud's address, its SSH connection
and its registry's address; nothing else hard-codes an IP.
"""
