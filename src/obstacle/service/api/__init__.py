"""The HTTP API: ``main.py`` joins the routers under ``routes/``; ``deps.py`` holds dependencies."""
