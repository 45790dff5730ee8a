"""``python -m rbln_eval``."""

from rbln_eval.cli import main

if __name__ == "__main__":
    main()
