"""The deployable HTTP feed service over the embedded scorer (:mod:`pinrank.serving`).

The repository keeps it at the top level (``serve/``, ``python -m serve run``); the wheel ships it
as ``pinrank.service`` (``pinrank serve``). Its modules import each other relatively so that both
names work.
"""
