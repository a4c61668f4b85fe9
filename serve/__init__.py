"""The HTTP feed service (:mod:`serve.app`), started by ``python -m serve run``."""
