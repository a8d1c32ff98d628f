"""`python -m hwcompress` == the `hwcompress` console script."""

from hwcompress.cli import main

if __name__ == "__main__":
    main()
