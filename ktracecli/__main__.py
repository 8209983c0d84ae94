"""``python -m ktracecli``: the same as the ``ktracecli`` command."""

from ktracecli.entry import main

if __name__ == "__main__":
    main()
