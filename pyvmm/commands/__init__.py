"""One module per CLI command; :mod:`pyvmm.cli` wires them into the group."""
