"""Recipes: one readable file per training stage, composing the layers below with a config dataclass."""
