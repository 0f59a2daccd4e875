"""Entry point of ``python -m pyvmm``: the CLI."""
from .cli import main

if __name__ == "__main__":
    main()
