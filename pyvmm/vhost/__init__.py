"""Data planes outside Python: the kernel's vhost fds (/dev/vhost-net,
/dev/vhost-vsock) and the vhost-user protocol (virtiofsd)."""
