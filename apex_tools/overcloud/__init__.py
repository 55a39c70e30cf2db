"""The overcloud deploy: the inventory and instackenv.json, the environment files, the
``openstack overcloud deploy`` command, the pre-flight checks, the stack's status."""
