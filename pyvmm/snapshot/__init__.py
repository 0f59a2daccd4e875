"""Snapshots: the file format (:mod:`.format`), vCPU state (:mod:`.vcpu_state`)
and guest memory (:mod:`.memory_image`)."""
