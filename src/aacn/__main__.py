"""``python -m aacn`` (and ``torchrun -m aacn``) runs the same CLI as the ``aacn`` script."""

from aacn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
