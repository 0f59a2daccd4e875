"""Entry point of ``python -m pyvmm``: the command line (:mod:`pyvmm.commands.entry`)."""
from .commands.entry import main

if __name__ == "__main__":
    main()
