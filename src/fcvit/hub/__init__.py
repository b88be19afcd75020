"""The models' front door: build a model by name, or from the weights a user has."""
