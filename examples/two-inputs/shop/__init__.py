"""A model with two inputs: numbers and a category, tuned by tuner on generated data."""
