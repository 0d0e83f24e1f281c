"""One module per quantity of the battery; each returns a JSON-ready record."""
