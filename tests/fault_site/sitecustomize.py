"""Installs the store fault hooks (../store_faults.py) in every Python process started with this
folder on PYTHONPATH and a TOKSTORE_TEST_* variable set: a way into the CLI's own process."""
import os
import sys

if any(key.startswith("TOKSTORE_TEST_") for key in os.environ):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import store_faults

    store_faults.install()
