"""Live migration between two pyvmm processes (docs/migration.md): the
framed stream (:mod:`.stream`), the addresses and connections
(:mod:`.transport`), the sending VMM (:mod:`.source`) and the receiving one
(:mod:`.destination`). Dirty page tracking is :mod:`pyvmm.dirty_log`."""
