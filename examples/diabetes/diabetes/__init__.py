"""A tabular regression tuned by tuner: scikit-learn's bundled diabetes data, no download."""
