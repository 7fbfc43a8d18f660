"""Infrastructure with no knowledge of the protocol: the training loop, stage checkpoints, devices
and processes, the terminal, kill points, atomic files."""
