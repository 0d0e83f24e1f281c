"""obstacle.workers: Celery workers that run the battery on uploaded runs.

    app.py           the worker's Celery app (`celery -A obstacle.workers.app worker`)
    celery_app.py    its configuration, shared with the service, which sends tasks by name
    tasks.py         obstacle.analyze_checkpoints, obstacle.finalize_analysis: ids in, retries, limits
    jobs.py          what the tasks do, idempotently, in short database transactions
    rundir.py        a run directory materialised from the artifact store for the battery
    runtime.py, launch.py, settings.py   device choice, one process per GPU or core, OBSTACLE_* settings

The battery (and torch) is imported only inside the tasks, in the pool processes.
"""
