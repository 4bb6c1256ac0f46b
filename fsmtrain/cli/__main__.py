"""``python -m fsmtrain.cli`` runs the command line (as ``python -m fsmtrain`` does)."""

if __name__ == "__main__":  # pragma: no cover
    from . import main

    main()
