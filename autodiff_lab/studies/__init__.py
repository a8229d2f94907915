"""The case studies: each trains a model on real data and writes its figures and numbers."""
