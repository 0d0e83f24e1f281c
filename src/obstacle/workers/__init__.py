"""obstacle.workers."""
