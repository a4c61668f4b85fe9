"""Export trained runs to one model package: ``python export.py run_dir=<run> out=<dir>``.

The thin shell the card asks for; the same command installed is ``pinrank export``. The Hydra
app is :mod:`pinrank.export.main`, its config ``conf/export.yaml``.
"""

from pinrank.export.main import main

if __name__ == "__main__":
    main()
