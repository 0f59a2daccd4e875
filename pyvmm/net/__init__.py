"""Host network plumbing for virtio-net (tap interfaces)."""
