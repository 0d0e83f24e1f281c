"""What the service and the workers share: settings, the database and its models, the artifact
store and its keys, the Celery app and its queue names.

The dependency goes one way: ``service`` and ``workers`` import ``platform``; ``platform`` imports
neither, and ``workers`` never imports ``service`` (``tests/test_boundaries.py`` checks both).
"""
