"""`fastmask bench`: the measurement (measure.py) and the tables that show it (tables.py).

A stage of its own, above the folder runners it times (`runs/`) and below the CLI that prints it.
"""
