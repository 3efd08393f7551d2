#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cqrs_replica.settings")
    here = os.path.dirname(os.path.abspath(__file__))
    # This project, and interop_settings.py beside it.
    sys.path[:0] = [here, os.path.dirname(here)]
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
