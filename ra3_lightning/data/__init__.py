"""Data: record sources, trace corpora, coding tasks, the synthetic world and DataModules."""
