"""The training engine shared by every method: sharding, optimisers and schedules, train state and step,
checkpoints, metric logging and the train / evaluate loop."""
