"""A tiny application package: the ORM models an application's env.py typically imports."""
