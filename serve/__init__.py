"""The HTTP feed service (:mod:`pinrank.serve.app`), started by ``python -m pinrank.serve run``."""
