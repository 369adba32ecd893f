"""Tasks: what the generic trainer needs to know about each method (model, data, loss, evaluation)."""
