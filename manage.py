#!/usr/bin/env python
import sys

if __name__ == "__main__":
    from orchestrator.cli import run_management

    run_management(sys.argv)
