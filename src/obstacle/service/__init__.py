"""obstacle.service."""
