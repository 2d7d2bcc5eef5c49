"""MIMIR model families, one folder each (configuration, modelling, conversion), as in transformers."""
