"""Device farm: inventory, device kinds (local, qemu, ssh), runner, results and gate."""
