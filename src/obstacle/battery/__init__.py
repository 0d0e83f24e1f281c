"""The battery: the pure library that loads a probe and checkpoints, computes every test of the
obstacle evidence, combines the records into a verdict and draws the report.

Never imports fastapi, celery, sqlalchemy or httpx (a test checks it).
"""
