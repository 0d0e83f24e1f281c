"""obstacle.client."""
