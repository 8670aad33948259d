"""State-space kernels (selective scan, SSD) and the Mamba / Mamba2 layers built on them."""
