"""One module per subtask; the launcher finds them by file name."""
