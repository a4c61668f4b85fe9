"""Train a pinrank model: ``python train.py [data=...] [model=...] [trainer=...] [experiment=...]``.

The thin shell the card asks for; the same command installed is ``pinrank train``. The Hydra app
is :mod:`pinrank.training.main`, its configs ``conf/`` (shipped as ``pkg://pinrank.conf``).
"""

from pinrank.training.main import main

if __name__ == "__main__":
    main()
