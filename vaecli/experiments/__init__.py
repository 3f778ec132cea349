"""Many runs: the runs table (catalog.py), sweeps (sweep.py) and Hydra's launcher and sweeper
plugins (launch.py)."""
