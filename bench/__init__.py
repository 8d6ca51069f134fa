"""The chatq benchmark: chatq vs the plain one-task-per-message Celery pattern vs the bare SDK."""
