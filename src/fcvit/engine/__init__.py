"""What every command shares, and nothing that belongs to one command: atomic writes, checkpoint files, run
directories, logging and progress, process groups, random-generator snapshots, config files and JSON output.

The commands (``fcvit.train``, ``fcvit.dense``, ``fcvit.analysis``, ``fcvit.bench``, ``fcvit.export``,
``fcvit.study``) import from here; this package imports none of them (``tests/test_import_rules.py``).
"""
