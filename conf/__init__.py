"""pinrank's Hydra configs. The repository keeps them at the top level (``conf/``); the wheel ships
them as the package ``pinrank.conf``, Hydra's search path ``pkg://pinrank.conf``."""
