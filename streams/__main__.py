"""``python -m streams``: run one detection worker (see :mod:`streams.runner`)."""

from streams.runner import main

if __name__ == "__main__":
    main()
