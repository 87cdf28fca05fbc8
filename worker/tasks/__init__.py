"""The Celery side: the app and its defaults, the thin tasks, publishing, the dispatcher
thread and the per-process runtime the tasks share."""
