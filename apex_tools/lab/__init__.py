"""The lab: stand-ins on loopback for what a real deployment reaches (an RDO-like image mirror,
an upstream registry seeded with small kolla-shaped images), for ``config/lab.yaml``.

No target knows about the lab: it is a configuration plus these servers, started detached with
pidfiles under ``<work_dir>/lab/``, left alone when running, stopped by ``stop_lab``.
"""
