"""Pure arm64 boot knowledge: the Image header, the guest memory map and the
device tree. Nothing here touches KVM."""
