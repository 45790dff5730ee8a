"""Running bundles: loading one, the replica in this process, devices and placement, the data-parallel pool and its Ray transport, and the machine report (doctor)."""
