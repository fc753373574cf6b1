"""The command line: the `run` entry point and what it prints."""
