"""obstacle.service: the HTTP API (FastAPI) that takes runs' probes and checkpoints and serves verdicts.

    app.py           create_app(settings): the FastAPI application
    api/             routes/<resource>.py (one APIRouter each), main.py joins them, deps.py
    settings.py      OBSTACLE_* settings, validated at start-up (shared part used by the workers)
    models.py, db.py, migrations/   SQLAlchemy tables, engine, Alembic migrations
    uploads.py, ingest.py           streamed, checksummed uploads, validated and stored atomically
    store.py, keys.py               the artifact store (fsspec) and where each file lives in it
    analyses.py, queue.py           creating analyses and sending their tasks to the workers
    auth.py, problems.py, metrics.py, schemas.py, runs.py, embedded.py, commands.py

Never imports torch (a test checks it); importing this package imports nothing heavy.
"""
