"""Test-only code that subprocess runs import (``PYTHONPATH=tests``)."""
