"""Worker side of helion_remote: runs jobs the coordinator sends."""
