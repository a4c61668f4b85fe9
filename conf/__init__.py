"""pinrank's Hydra configs. The repository keeps them at the top level (``conf/``); the wheel ships
them as the package ``pinrank.conf``, Hydra's search path ``pkg://pinrank.conf``.

Importing it (Hydra does, to search it) registers the ``${pinrank_conf:}`` resolver the configs
use for their own folder.
"""

from pinrank.resources import register_resolvers

register_resolvers()
