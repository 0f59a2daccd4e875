"""Pure arm64 knowledge: register ids and names, system registers, the vector
(SVE/SME) configuration, the ABI page's restore order and errno meanings;
no file descriptors and no I/O, so everything here is tested on any host."""
