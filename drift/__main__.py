from drift.cli import entry

entry()
