"""Small host-side utilities: image grids, atomic file writes, progress display."""
