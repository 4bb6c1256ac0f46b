"""``python -m fsmtrain`` runs the command line."""

if __name__ == "__main__":
    from ._entry import main

    main()
